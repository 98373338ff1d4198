"""Schemathesis against the service's own OpenAPI document: no 5xx, every response matches its schema.

Bounded: a few examples per operation (CI runs this reduced count), in both modes (the embedded default, and an
API replica with a Celery worker around Redis), against real processes on loopback that serve two trained models
(one of them taking images), to which most generated predictions and samples are sent, so that they also reach the
prediction and ingestion paths.  The binary bodies are generated as what they claim to be (.npy and .npz files of
every dtype and shape, objects included; PNG and JPEG images of every size and mode, some truncated) or as random
bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
from schemathesis.hooks import HookContext

from service.client import Client
from tests.distributed.processes import RedisServer, running, start_replica, start_worker
from tests.e2e.conftest import clserve
from tests.service.conftest import blobs
from tests.service.media_strategies import BODIES

EXAMPLES = 12
FORM = "multipart/form-data"

# model archives and weights are binary: random bytes (the service must answer 4xx, never 5xx)
schemathesis.openapi.media_type("application/zip", st.binary(max_size=256))

MODELS = ("m", "img")  # the served models: 8 numbers; 16 numbers or a 4×4 grey image
for media, strategy in BODIES.items():  # files as they claim to be (of every dtype, shape, size, mode), or junk
    schemathesis.openapi.media_type(media, strategy)


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
        client.create_model("img", "mlp", [16], options={"hidden": [8]}, preprocessing={"mode": "L", "size": [4, 4]})
        for name, width in zip(MODELS, (8, 16), strict=True):
            x, y = blobs(["a", "b"], 25, dim=width)
            answer = client.post_samples(name, x, y)
            assert client.wait_update(name, answer["update_id"], timeout=120)["status"] == "succeeded"
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")

        @schema.hook
        def flatmap_path_parameters(context: HookContext, path_parameters: dict[str, Any] | None) -> st.SearchStrategy:
            """Predictions and samples go to a served model most of the time (else a generated name: 404)."""
            operation = context.operation
            if operation is None or not path_parameters or not operation.path.endswith(("predict", "samples")):
                return st.just(path_parameters)
            served = st.sampled_from(MODELS).map(lambda name: {**path_parameters, "name": name})
            return st.one_of(served, served, st.just(path_parameters))

        yield schema


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


def test_the_document_lists_every_body_form(tmp_path: Path) -> None:
    from service.app import create_app
    from service.settings import Settings

    paths = create_app(Settings(data_dir=tmp_path)).openapi()["paths"]
    forms = {
        path: set(paths[path]["post"]["requestBody"]["content"])
        for path in ("/v1/models/{name}/predict", "/v1/models/{name}/samples")
    }
    assert forms == {
        "/v1/models/{name}/predict": {"application/json", "application/x-npy", "image/png", "image/jpeg", FORM},
        "/v1/models/{name}/samples": {"application/json", "application/x-npz", "image/png", "image/jpeg", FORM},
    }
