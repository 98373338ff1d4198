"""Signed promotions where they are served: the `ModelServer` of a replica (on notifications and on its periodic
re-read, over the Redis store) and the embedded service (local store), with and without a signing key."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pydantic
import pytest
import redis
from fastapi.testclient import TestClient

from cl_core.models import ModelSpec, build_model
from registry import ModelRecord, Store, VersionRecord, open_store
from registry import tensors as st
from registry.redis_store import RedisStore
from registry.signing import Reason, Signer, Verifier
from service.serving import ModelServer
from service.settings import Settings

KEY = "service-signing-key-" + "7" * 20
SPEC = ModelSpec("mlp", (8,), ["a", "b"], {"hidden": [16]})


def weights(seed: int) -> bytes:
    return st.dumps(build_model(SPEC, seed=seed).state_dict())


def add_model(store: Store, versions: int = 2) -> None:
    store.create_model(ModelRecord("m", "mlp", [8], ["a", "b"], {"hidden": [16]}))
    for seed in range(versions):
        record = VersionRecord(model="m", version=0, parent=None, spec=SPEC.to_json(), learner={}, method="auto")
        store.commit_version(record, weights(seed), st.dumps({}))


class Refusals:
    """What a server reports through `on_refusal`."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Reason]] = []
        self.changed = threading.Condition()

    def __call__(self, name: str, reason: Reason) -> None:
        with self.changed:
            self.seen.append((name, reason))
            self.changed.notify_all()

    def wait(self, count: int, timeout: float = 10.0) -> list[Reason]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.seen) >= count, timeout), self.seen
            return [reason for _, reason in self.seen]


@pytest.fixture
def servers(redis_url: str) -> Iterator[Callable[..., tuple[ModelServer, Refusals]]]:
    """Started model servers over the Redis store (each its own store connection, as replicas have)."""
    started: list[tuple[ModelServer, Store]] = []

    def start(*, key: str | None = KEY, reload_interval_s: float = 60.0) -> tuple[ModelServer, Refusals]:
        signer = None if key is None else Signer(key)
        store = RedisStore(redis_url, signer=signer)
        verifier = None if signer is None else Verifier(signer)
        server = ModelServer(store, device="cpu", reload_interval_s=reload_interval_s, verifier=verifier)
        refusals = Refusals()
        server.on_refusal(refusals)
        server.start()
        started.append((server, store))
        return server, refusals

    yield start
    for server, store in started:
        server.stop()
        store.close()


def served(server: ModelServer) -> int | None:
    live = server.current("m")
    return None if live is None else live.version


def test_a_signed_promotion_is_served_and_a_pointer_moved_without_the_key_is_refused(
    redis_url: str, servers: Callable[..., tuple[ModelServer, Refusals]], caplog: pytest.LogCaptureFixture
) -> None:
    promoter = RedisStore(redis_url, signer=Signer(KEY))  # a worker or replica holding the key
    add_model(promoter)
    assert promoter.promote("m", 1, by="worker")
    server, refusals = servers(reload_interval_s=0.05)  # the periodic re-read finds what was not published
    assert served(server) == 1
    client = redis.Redis.from_url(redis_url)
    client.set("cl:{m}:live", 2)  # moved without the key, not even published
    with caplog.at_level(logging.WARNING, logger="service.serving"):
        assert set(refusals.wait(3)) == {"replayed"}  # counted on every re-read while it stands...
    assert served(server) == 1
    warnings = [r for r in caplog.records if "refusing the live pointer of m" in r.getMessage()]
    assert len(warnings) == 1  # ...logged once
    assert "still serving version 1" in warnings[0].getMessage()
    assert promoter.promote("m", 2, by="worker")  # the same change, made with the key
    server.refresh("m")
    assert served(server) == 2
    before = server.current("m")
    old_record = client.get("cl:{m}:promotion")
    assert before is not None and promoter.promote("m", 2, by="operator")  # the served version, signed anew
    server.refresh("m")
    after = server.current("m")
    assert after is not None and after.model is before.model  # accepted without loading it again
    assert after.promotion is not None and before.promotion is not None and after.promotion.seq > before.promotion.seq
    client.set("cl:{m}:promotion", old_record or b"")  # its previous record, copied back: a replay
    server.refresh("m")
    assert refusals.seen[-1] == ("m", "replayed") and served(server) == 2
    promoter.close()


def test_a_fresh_replica_refuses_weights_changed_after_their_promotion(
    redis_url: str, servers: Callable[..., tuple[ModelServer, Refusals]]
) -> None:
    promoter = RedisStore(redis_url, signer=Signer(KEY))
    add_model(promoter)
    assert promoter.promote("m", 2, by="worker")
    first, _ = servers()
    assert served(first) == 2
    redis.Redis.from_url(redis_url).hset("cl:{m}:v:2", "weights", weights(seed=99))  # same shapes, other values
    second, refusals = servers()  # a replica started (or restarted) after the change
    assert served(second) is None and refusals.wait(1) == ["digest"]
    assert served(first) == 2  # what was loaded before stays served
    assert promoter.promote("m", 1, by="operator")  # a known-good version, promoted with the key
    second.refresh("m")
    assert served(second) == 1
    promoter.close()


def test_a_replica_with_the_key_refuses_a_pointer_promoted_without_it(
    redis_url: str, servers: Callable[..., tuple[ModelServer, Refusals]]
) -> None:
    keyless = RedisStore(redis_url)  # e.g. a worker deployed without CL_SIGNING_KEY
    add_model(keyless)
    assert keyless.promote("m", 1, by="worker")
    server, refusals = servers()
    assert served(server) is None and refusals.wait(1) == ["unsigned"]
    keyless.close()


def test_without_a_key_a_replica_follows_the_pointer_as_before(
    redis_url: str, servers: Callable[..., tuple[ModelServer, Refusals]]
) -> None:
    store = RedisStore(redis_url)
    add_model(store)
    assert store.promote("m", 1, by="worker")
    server, refusals = servers(key=None)
    assert served(server) == 1
    client = redis.Redis.from_url(redis_url)
    client.set("cl:{m}:live", 2)
    server.refresh("m")  # what a notification does
    assert served(server) == 2 and refusals.seen == []
    store.close()


def test_the_embedded_service_signs_and_refuses_an_edited_pointer(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", device="cpu", signing_key=KEY)
    from service.app import create_app

    with TestClient(create_app(settings)) as client:
        body = {"name": "m", "architecture": "mlp", "input_shape": [8], "options": {"hidden": [16]}, "classes": ["a"]}
        assert client.post("/v1/models", json=body).status_code == 201
        one = st.dumps(build_model(ModelSpec("mlp", (8,), ["a"], {"hidden": [16]}), seed=0).state_dict())
        for expected in (1, 2):
            response = client.put(
                "/v1/models/m/weights", content=one, headers={"Content-Type": "application/octet-stream"}
            )
            assert response.status_code == 201 and response.json()["version"] == expected, response.text
        predict = {"inputs": [[0.0] * 8]}
        assert client.post("/v1/models/m/predict", json=predict).json()["version"] == 2
        live = tmp_path / "data" / "models" / "m" / "live.json"
        pointer = json.loads(live.read_text())
        assert pointer["version"] == 2 and json.loads(pointer["promotion"])["version"] == 2
        live.write_text(json.dumps({**pointer, "version": 1}))  # edited on disk, without the key
        client.app.state.runtime.server.refresh("m")  # type: ignore[attr-defined]
        assert client.post("/v1/models/m/predict", json=predict).json()["version"] == 2
        exposition = client.get("/metrics").text
        assert re.search(r'cl_promotion_rejected_total\{model="m",reason="replayed"\} 1\.0', exposition)
        assert re.search(r'cl_promotion_rejected_total\{model="m",reason="forged"\} 0\.0', exposition)
        assert client.post("/v1/models/m/versions/1/promote").status_code == 200  # with the key: served
        assert client.post("/v1/models/m/predict", json=predict).json()["version"] == 1
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_signing_keys_are_checked_and_never_shown() -> None:
    with pytest.raises(pydantic.ValidationError, match="at least 32"):
        Settings(signing_key="too-short")
    with pytest.raises(pydantic.ValidationError, match="at least 32"):
        Settings(signing_key=KEY, signing_keys_old=["short"])
    with pytest.raises(pydantic.ValidationError, match="without CL_SIGNING_KEY"):
        Settings(signing_keys_old=[KEY])
    settings = Settings(signing_key=KEY, signing_keys_old=["o" * 32], api_keys={"k" * 16: "admin"})
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())
    assert settings.signer() is not None and Settings().signer() is None


def test_a_store_opened_without_a_key_says_so(tmp_path: Path, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="registry"):
        open_store(tmp_path / "a", redis_url).close()
        open_store(tmp_path / "b", redis_url, signer=Signer(KEY)).close()
        open_store(tmp_path / "c").close()
    levels = [(r.levelno, "CL_SIGNING_KEY is not set" in r.getMessage()) for r in caplog.records]
    assert levels == [(logging.WARNING, True), (logging.INFO, True)]  # distributed: a warning; embedded: a note
