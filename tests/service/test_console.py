"""The console's server side (`service.ui`): the page and its assets under a strict Content-Security-Policy (on /ui
only), hostile paths refused without reaching a file outside the assets, code that never parses text as HTML, and
every asset shipped in the package (a wheel and an sdist built from this checkout hold each one)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.ui import CONTENT_SECURITY_POLICY, STATIC

ROOT = Path(__file__).resolve().parents[2]
ASSETS = sorted(p.relative_to(STATIC).as_posix() for p in STATIC.rglob("*") if p.is_file())
SECURITY = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


def test_the_assets_are_what_the_page_loads() -> None:
    page = (STATIC / "index.html").read_text()
    for loaded in re.findall(r'(?:src|href)="/ui/static/([^"]+)"', page):
        assert loaded in ASSETS, loaded
    assert {"app.js", "vendor/uplot/uPlot.esm.js", "vendor/uplot/uPlot.min.css", "vendor/uplot/LICENSE"} <= set(ASSETS)


def test_the_policy_allows_nothing_inline_and_nothing_from_elsewhere() -> None:
    directives = dict(d.split(" ", 1) for d in CONTENT_SECURITY_POLICY.split("; "))
    assert directives["default-src"] == "'none'"
    for name in ("script-src", "style-src", "connect-src", "img-src"):
        assert directives[name] == "'self'", name
    assert directives["form-action"] == "'none'" and directives["frame-ancestors"] == "'none'"


@pytest.mark.parametrize("path", ["/ui", "/ui/static/app.js", "/ui/static/vendor/uplot/LICENSE", "/ui/static/x.js"])
def test_every_answer_under_ui_carries_the_security_headers(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == (404 if path.endswith("x.js") else 200)
    for name, value in SECURITY.items():
        assert response.headers[name] == value, name


def test_the_page_and_scripts_are_served_as_what_they_are(client: TestClient) -> None:
    page = client.get("/ui")
    assert page.headers["content-type"].startswith("text/html") and page.headers["cache-control"] == "no-store"
    assert page.text == (STATIC / "index.html").read_text()
    script = client.get("/ui/static/app.js")
    assert "javascript" in script.headers["content-type"] and script.headers["cache-control"] == "no-cache"
    assert client.get("/ui/", follow_redirects=False).headers["location"].endswith("/ui")


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/healthz", "/v1/models", "/uix", "/openapi.json"])
def test_other_paths_keep_their_own_headers(client: TestClient, path: str) -> None:
    assert "content-security-policy" not in client.get(path).headers  # /docs runs Swagger UI's inline script


@pytest.mark.parametrize(
    "path",
    [
        "/ui/static/%2e%2e/__init__.py",
        "/ui/static/..%2f__init__.py",
        "/ui/static/%2e%2e/%2e%2e/app.py",
        "/ui/static/" + "a" * 5000,
        "/ui/static/%00",
        "/ui/static/",
        "/ui/static/vendor",
    ],
)
def test_hostile_paths_reach_no_file_outside_the_assets(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404 and "import" not in response.text
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


def test_a_key_in_the_console_url_is_refused_under_the_same_policy(client: TestClient) -> None:
    response = client.get("/ui?api_key=0123456789abcdef0123")
    assert response.status_code == 400 and "Authorization" in response.json()["detail"]
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert client.post("/ui").status_code == 405


@pytest.mark.parametrize("name", [a for a in ASSETS if a.endswith(".js")])
def test_no_script_parses_text_as_html_or_code(name: str) -> None:
    """The API's labels, ids and messages reach the page as text only (no HTML sink), and no string becomes code."""
    code = (STATIC / name).read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in code, (name, sink)


def test_a_wheel_and_an_sdist_of_this_checkout_ship_every_asset(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for package in ("cl_core", "registry", "worker", "service", "clbench"):
        shutil.copytree(ROOT / package, source / package, ignore=ignore)
    out = tmp_path / "dist"
    # (the directory is read first: setuptools rewrites sys.argv while it builds)
    build = "import sys; from setuptools import build_meta; out = sys.argv[1]; build_meta.build_wheel(out); "
    build += "build_meta.build_sdist(out)"
    done = subprocess.run(
        [sys.executable, "-c", build, str(out)], cwd=source, capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [wheel], [sdist_file] = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    with tarfile.open(sdist_file) as sdist:
        in_sdist = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for asset in ASSETS:
        assert f"service/ui/static/{asset}" in in_wheel, asset
        assert f"service/ui/static/{asset}" in in_sdist, asset
