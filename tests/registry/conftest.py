"""Every store backend runs the same contract tests."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from registry import LocalStore, Store
from registry.heldout import DEFAULT_CAPACITY
from registry.signing import Signer

BACKENDS = ["local", "redis", "redis-acl"]  # redis-acl: as docker-compose.yml's application user
SIGNER = Signer("contract-signing-key-" + "0" * 16)
"""The key of the signed stores in the contract tests."""
_URL_FIXTURES = {"redis": "redis_url", "redis-acl": "acl_redis_url"}


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "local":
        s: Store = LocalStore(tmp_path / "store")
    else:
        from registry.redis_store import RedisStore

        s = RedisStore(request.getfixturevalue(_URL_FIXTURES[request.param]))
    yield s
    s.close()


@pytest.fixture(params=BACKENDS)
def open_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[Signer | None], Store]]:
    """Opens stores over one backend's data, each with the signer given (several processes of one deployment)."""
    opened: list[Store] = []
    url = request.getfixturevalue(_URL_FIXTURES[request.param]) if request.param != "local" else ""

    def open_one(signer: Signer | None) -> Store:
        if request.param == "local":
            s: Store = LocalStore(tmp_path / "store", signer=signer)
        else:
            from registry.redis_store import RedisStore

            s = RedisStore(url, signer=signer)
        opened.append(s)
        return s

    yield open_one
    for s in opened:
        s.close()


@pytest.fixture
def signed_store(open_backend: Callable[[Signer | None], Store]) -> Store:
    return open_backend(SIGNER)


@pytest.fixture(params=BACKENDS)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Store]]:
    """Opens a store of one backend with the held-out capacity given."""
    opened: list[Store] = []
    url = request.getfixturevalue(_URL_FIXTURES[request.param]) if request.param != "local" else ""

    def open_one(heldout_capacity: int = DEFAULT_CAPACITY) -> Store:
        if request.param == "local":
            s: Store = LocalStore(tmp_path / f"store{len(opened)}", heldout_capacity=heldout_capacity)
        else:
            from registry.redis_store import RedisStore

            s = RedisStore(url, heldout_capacity=heldout_capacity)
        opened.append(s)
        return s

    yield open_one
    for s in opened:
        s.close()
