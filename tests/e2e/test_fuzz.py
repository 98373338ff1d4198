"""Schemathesis against the service's own OpenAPI document: no 5xx, every response matches its schema.

Bounded: a few examples per operation (CI runs this reduced count), in both modes (the embedded default, and an
API replica with a Celery worker around Redis), against real processes on loopback that serve a trained model,
so that generated requests also reach the prediction and ingestion paths.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from service.client import Client
from tests.distributed.processes import RedisServer, running, start_replica, start_worker
from tests.e2e.conftest import clserve
from tests.service.conftest import blobs

EXAMPLES = 12

# model archives and weights are binary: random bytes (the service must answer 4xx, never 5xx)
schemathesis.openapi.media_type("application/zip", st.binary(max_size=256))


ENV = {"CL_EPOCHS": "3", "CL_BATCH_SIZE": "16", "CL_RATE_LIMIT_PER_S": "0"}


@contextmanager
def service(mode: str, tmp: Path, session_redis: RedisServer) -> Iterator[str]:
    """The embedded default, or an API replica with a Celery worker around the suite's redis-server."""
    if mode == "embedded":
        with clserve(tmp / "data", log=tmp / "clserve.log", **ENV) as url:
            yield url
        return
    redis_url = session_redis.fresh_url()
    replica, url = start_replica(redis_url, tmp / "data", log=tmp / "replica.log", **ENV)
    worker, _ = start_worker(redis_url, log=tmp / "worker.log", env=ENV)
    with running(replica, worker):
        yield url


@pytest.fixture(scope="module", params=["embedded", "redis"])
def api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, session_redis: RedisServer
) -> Iterator[schemathesis.schemas.BaseSchema]:
    tmp = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    with service(request.param, tmp, session_redis) as url, Client(url) as client:
        client.create_model("m", "mlp", [8], options={"hidden": [8]})
        x, y = blobs(["a", "b"], 25)
        answer = client.post_samples("m", x, y)
        assert client.wait_update("m", answer["update_id"], timeout=120)["status"] == "succeeded"
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api")


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors_and_responses_match_their_schema(case: schemathesis.Case) -> None:
    case.call_and_validate(
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
        timeout=60,
    )


def test_the_fuzzed_document_lists_every_operation(tmp_path: Path) -> None:
    from service.app import create_app
    from service.settings import Settings

    operations = {
        (method.upper(), path)
        for path, item in create_app(Settings(data_dir=tmp_path)).openapi()["paths"].items()
        for method in item
    }
    assert ("POST", "/v1/models/{name}/predict") in operations and len(operations) >= 18
