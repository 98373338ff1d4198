"""Every store backend runs the same contract tests."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from registry import LocalStore, Store

BACKENDS = ["local", "redis"]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "local":
        s: Store = LocalStore(tmp_path / "store")
    else:
        from registry.redis_store import RedisStore

        s = RedisStore(request.getfixturevalue("redis_url"))
    yield s
    s.close()
