"""Issue 12, failure 10: with write access to Redis, `SET cl:{m}:live 1` + `PUBLISH` made every replica serve
version 1 with no promotion record.  A replica with a signing key (`CL_SIGNING_KEY`) refuses a pointer whose
promotion record is missing, forged or replayed, keeps serving what it has, and counts the refusal; a promotion
made with the key is served."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from tests.distributed.conftest import REPLICA_ENV, create_model, import_weights, metrics, predict, served, wait_served
from tests.distributed.processes import RedisServer, running, start_replica, wait_for

pytestmark = pytest.mark.slow

KEY = "0123456789abcdef" * 4  # 64 characters


@dataclass
class Keyed:
    url: str  # the replica
    redis: redis.Redis
    channel: str
    log: Path


@pytest.fixture(scope="module")
def keyed(session_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
    """One replica that holds the signing key, with model "m" at version 2 (imported weights, promoted)."""
    url = session_redis.fresh_url()
    logs = tmp_path_factory.mktemp("signing")
    replica, replica_url = start_replica(url, logs / "data", log=logs / "api.log", CL_SIGNING_KEY=KEY, **REPLICA_ENV)
    client = redis.Redis.from_url(url)
    try:
        with running(replica):
            create_model(replica_url, "m", ("a", "b"))
            assert import_weights(replica_url, "m", ["a", "b"]) == 1
            assert import_weights(replica_url, "m", ["a", "b"]) == 2
            wait_served(replica_url, "m", 2)
            yield Keyed(replica_url, client, f"cl:db{url.rsplit('/', 1)[1]}:live", logs / "api.log")
    finally:
        client.close()


def refusals(url: str, reason: str) -> float:
    """cl_promotion_rejected_total of model m for ``reason`` on a replica (0 when absent)."""
    found = re.search(rf'cl_promotion_rejected_total\{{model="m",reason="{reason}"\}} ([0-9.e+]+)', metrics(url))
    return float(found.group(1)) if found else 0.0


def forge(keyed: Keyed, version: int, record: bytes | str | None) -> None:
    """What an attacker with write access to Redis does: move the pointer (with a record, or none) and announce it."""
    pipe = keyed.redis.pipeline(transaction=True)
    pipe.set("cl:{m}:live", version)
    if record is None:
        pipe.delete("cl:{m}:promotion")
    else:
        pipe.set("cl:{m}:promotion", record)
    pipe.execute()
    keyed.redis.publish(keyed.channel, json.dumps({"model": "m", "version": version}))


def refused(keyed: Keyed, reason: str, before: float) -> None:
    wait_for(lambda: refusals(keyed.url, reason) > before, timeout=10, what=f"a refusal ({reason}) counted")
    assert served(keyed.url, "m") == 2
    assert predict(keyed.url, "m").json()["version"] == 2


def test_a_pointer_set_and_published_without_the_key_is_not_served(keyed: Keyed) -> None:
    before = refusals(keyed.url, "replayed")
    keyed.redis.set("cl:{m}:live", 1)  # issue 12's reproduction: the record of version 2 stays in place
    keyed.redis.publish(keyed.channel, json.dumps({"model": "m", "version": 1}))
    refused(keyed, "replayed", before)
    keyed.redis.set("cl:{m}:live", 2)  # restore what the replica serves for the next cases


def test_a_pointer_without_a_record_is_not_served(keyed: Keyed) -> None:
    record = keyed.redis.get("cl:{m}:promotion")
    before = refusals(keyed.url, "unsigned")
    forge(keyed, 1, None)
    refused(keyed, "unsigned", before)
    forge(keyed, 2, record)


def test_a_record_with_a_made_up_signature_is_not_served(keyed: Keyed) -> None:
    record = keyed.redis.get("cl:{m}:promotion")
    assert record is not None
    fake = json.loads(record)
    fake.update(version=1, seq=fake["seq"] + 10**9, mac="00" * 32)
    before = refusals(keyed.url, "forged")
    forge(keyed, 1, json.dumps(fake))
    refused(keyed, "forged", before)
    before = refusals(keyed.url, "forged")
    forge(keyed, 1, b"\xff not json")
    refused(keyed, "forged", before)
    forge(keyed, 2, record)


def test_an_older_valid_record_copied_back_is_a_replay_and_not_served(keyed: Keyed) -> None:
    current = keyed.redis.get("cl:{m}:promotion")
    # version 1's own record, from its legitimate promotion: promote 1 then 2 again through the API (signed)
    for version in (1, 2):
        response = httpx.post(f"{keyed.url}/v1/models/m/versions/{version}/promote", timeout=30)
        assert response.status_code == 200, response.text
        wait_served(keyed.url, "m", version)
        if version == 1:
            old = keyed.redis.get("cl:{m}:promotion")
    assert old is not None and old != current
    before = refusals(keyed.url, "replayed")
    forge(keyed, 1, old)
    refused(keyed, "replayed", before)
    keyed.redis.set("cl:{m}:live", 2)


def test_a_promotion_made_with_the_key_is_served(keyed: Keyed, tmp_path: Path) -> None:
    from registry.redis_store import RedisStore
    from registry.signing import Signer

    response = httpx.post(f"{keyed.url}/v1/models/m/versions/1/promote", timeout=30)
    assert response.status_code == 200, response.text
    wait_served(keyed.url, "m", 1)
    assert predict(keyed.url, "m").json()["version"] == 1
    # another process holding the key (a worker) promotes: its notification is served too
    url = keyed.redis.connection_pool.connection_kwargs
    store = RedisStore(f"redis://127.0.0.1:{url['port']}/{url['db']}", signer=Signer(KEY))
    try:
        assert store.promote("m", 2, by="worker")
    finally:
        store.close()
    wait_served(keyed.url, "m", 2)
    assert refusals(keyed.url, "digest") == 0


def test_refusals_are_logged_and_audited_and_the_key_is_in_no_log_and_no_redis_value(keyed: Keyed) -> None:
    log = keyed.log.read_text()
    assert "refusing the live pointer of m (unsigned)" in log and "still serving version 2" in log
    audited = [json.loads(line) for line in log.splitlines() if '"event":"promotion.refused"' in line]
    assert {entry["reason"] for entry in audited} >= {"unsigned", "forged", "replayed"}
    assert KEY not in log
    for key in keyed.redis.scan_iter():
        kind = keyed.redis.type(key)
        value = keyed.redis.dump(key) if kind != b"stream" else b""
        assert KEY.encode() not in (value or b""), key
