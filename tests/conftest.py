"""Suite-wide settings: one thread per process keeps the suite fast and deterministic on small machines.

Updates in the suite train the fixed ``CL_EPOCHS`` its tests set (``CL_TRAIN_BUDGET=epochs``, here and in the
processes the tests start): the service's default, early stopping with a choice among candidates, trains several
times longer, and only its own tests (and the demo's end-to-end test) ask for it.

The suite also starts one private redis-server (never the system one) for the Redis store and the distributed
tests; every test that asks for ``redis_url`` gets an empty database of its own.
"""

import os
import shutil
from collections.abc import Iterator

import pytest
import torch

from tests.distributed.processes import RedisServer, redis_server

torch.set_num_threads(1)
os.environ.setdefault("CL_TRAIN_BUDGET", "epochs")


@pytest.fixture(scope="session")
def session_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session: a free loopback port, no persistence, its own directory."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (.ci/run installs it: apt-get install redis-server)")
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(session_redis: RedisServer) -> str:
    """redis://127.0.0.1:<port>/<db> of a flushed database no other test uses."""
    return session_redis.fresh_url()


@pytest.fixture(scope="session")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server with docker-compose.yml's users: the default user off, the application's user limited to the
    commands of deploy/redis/app-user.acl."""
    with redis_server(tmp_path_factory.mktemp("redis-acl"), acl=True) as server:
        yield server


@pytest.fixture
def acl_redis_url(acl_redis: RedisServer) -> Iterator[str]:
    """redis://continual-serve:…@127.0.0.1:<port>/<db> of a fresh database; fails the test if the ACL refused any
    command meanwhile (a command the code needs and the ACL file lacks)."""
    acl_redis.denied()
    yield acl_redis.fresh_url()
    denied = acl_redis.denied()
    assert not denied, f"deploy/redis/app-user.acl refused: {denied}"
