"""The operator's console (`/ui`) in a real browser, for its end-to-end tests and the screenshot script: Debian's
`chromium` driven by Playwright, launched by its path (no browser is ever downloaded: `playwright install` is never
run), and the states of the demo model worth looking at (a rejected version, quarantined samples).
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from service.client import Client
from service.demo import demo_digits

CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update"]
"""As root Chromium needs --no-sandbox; the other two keep it from calling out (there is no network to call)."""


def chromium_path() -> str:
    """The system's Chromium (Debian's `chromium` package: .ci/run installs it where missing)."""
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)
    if path is None:
        raise FileNotFoundError("chromium is not installed (.ci/run installs it: apt-get install chromium)")
    return path


@contextmanager
def launched_browser() -> Iterator[Browser]:
    """Headless Chromium for the duration of the block."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Watched:
    """What a page reported: errors on its console (CSP violations among them) and uncaught exceptions, and the URL
    of every request it made."""

    page: Page
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def csp_violations(self) -> list[str]:
        return [e for e in self.errors if "Content Security Policy" in e]


def watch(page: Page) -> Watched:
    watched = Watched(page)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            watched.errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: watched.errors.append(f"uncaught: {error}"))
    page.on("request", lambda request: watched.requests.append(request.url))
    return watched


def chart_data(page: Page, chart_id: str) -> dict[str, Any]:
    """The data a chart of the console was drawn from (its container's ``data-chart``)."""
    text = page.get_attribute(f"#{chart_id}", "data-chart")
    assert text is not None, f"#{chart_id} has no data-chart"
    data: dict[str, Any] = json.loads(text)
    return data


def damaged_weights(url: str, model: str, label: str, headers: dict[str, str] | None = None) -> bytes:
    """The live version's weights with the head's bias of ``label`` lowered by 50: that class is never predicted any
    more, everything else unchanged (a version the forgetting gate must reject, naming that class)."""
    with httpx.Client(base_url=url, headers=headers or {}, timeout=60) as http:
        live = http.get(f"/v1/models/{model}").raise_for_status().json()["live_version"]
        classes = http.get(f"/v1/models/{model}/versions/{live}").raise_for_status().json()["classes"]
        archive = zipfile.ZipFile(io.BytesIO(http.get(f"/v1/models/{model}/export").raise_for_status().content))
    weights = load_safetensors(archive.read(f"versions/{live}/model.safetensors"))
    weights["head.bias"][classes.index(label)] -= 50.0
    return save_safetensors(weights)


def post_flips(client: Client, model: str, digit: int, label: str, limit: int = 200) -> dict[str, Any]:
    """Post ``limit`` images of ``digit`` labeled ``label`` and run an update: label screening quarantines them and
    the update ends rejected with nothing to learn.  Returns the update's status."""
    inputs, _ = demo_digits([digit])
    client.post_samples(model, inputs[:limit], [label] * min(limit, len(inputs)))
    update = client.start_update(model)
    return client.wait_update(model, update["update_id"])
