"""Every store backend runs the same contract tests."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from registry import LocalStore, Store

BACKENDS = ["local"]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "local":
        s: Store = LocalStore(tmp_path / "store")
    yield s
    s.close()
