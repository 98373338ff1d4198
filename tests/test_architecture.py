"""Dependencies point one way: service → worker → registry, all of them → cl_core; clbench may use any of them;
nothing imports service or clbench; cl_core imports no web, queue or store package."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["cl_core", "registry", "worker", "service", "clbench"]
# which project packages each package may import
ALLOWED = {
    "cl_core": set(),
    "registry": {"cl_core"},
    "worker": {"registry", "cl_core"},
    "service": {"worker", "registry", "cl_core"},
    "clbench": {"service", "worker", "registry", "cl_core"},
}
FORBIDDEN_THIRD_PARTY = {
    "cl_core": {
        "fastapi",
        "starlette",
        "redis",
        "celery",
        "uvicorn",
        "prometheus_client",
        "httpx",
        "pydantic",
    },
    "registry": {"fastapi", "starlette", "celery", "uvicorn"},
    "worker": {"fastapi", "starlette", "uvicorn"},
}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", [p for p in PACKAGES if (ROOT / p).is_dir()])
def test_dependencies_point_one_way(package: str) -> None:
    assert files(package), f"{package} has no modules"
    for path in files(package):
        roots = imported_roots(path)
        project = roots & set(PACKAGES) - {package}
        assert project <= ALLOWED[package], f"{path.relative_to(ROOT)} imports {sorted(project - ALLOWED[package])}"
        banned = roots & FORBIDDEN_THIRD_PARTY.get(package, set())
        assert not banned, f"{path.relative_to(ROOT)} imports {sorted(banned)}"


def test_the_checker_sees_imports(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("import redis.client\nfrom fastapi import FastAPI\nfrom . import x\nimport torch as t\n")
    assert imported_roots(sample) == {"redis", "fastapi", "torch"}


def test_no_pickle_of_stored_or_received_data() -> None:
    for package in PACKAGES:
        for path in files(package) if (ROOT / package).is_dir() else []:
            text = path.read_text()
            assert "pickle.load" not in text, path
            assert "torch.load(" not in text or "weights_only=True" in text, path
