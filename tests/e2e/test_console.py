"""The operator's console in a real browser (Chromium through Playwright) against a real `clserve --demo`.

One server for the module; the tests run in file order, each on the state the previous one left (as an operator
would go): the demo model listed under a strict policy; new classes posted through the API show their update's
progress, then version 2 with its per-class figures, the charts drawn from the figures the API reports; a version
the gate rejected is promoted only by force, after its figures were shown, and the class it broke stands out;
rolling back to version 1 from the page serves version 1; quarantined samples released and deleted from the page.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser

from service.client import Client, ServiceError
from service.demo import demo_digits
from service.ui import CONTENT_SECURITY_POLICY
from tests.e2e.conftest import clserve, wait_until
from tests.e2e.console import Watched, chart_data, damaged_weights, launched_browser, post_flips, watch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

OLD, NEW = ["0", "1", "2", "3", "4"], ["5", "6", "7", "8", "9"]
WAIT_MS = 60_000  # an update on two busy cores


@dataclass
class Demo:
    url: str
    client: Client
    log: Path


def live_version(client: Client) -> int | None:
    try:
        return client.model("digits")["live_version"]
    except ServiceError:
        return None  # not created yet


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    # 30 epochs instead of 10: the update of 5-9 then runs for seconds, long enough to be watched in the page
    folder = tmp_path_factory.mktemp("console")
    log = folder / "clserve.log"
    with clserve(folder / "data", ["--demo"], log=log, CL_EPOCHS="30") as url, Client(url) as client:
        wait_until(lambda: live_version(client) == 1, timeout=300, what="the demo's first version")
        yield Demo(url, client, log)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    try:
        with launched_browser() as launched:
            yield launched
    except FileNotFoundError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def page(browser: Browser) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    watched = watch(context.new_page())
    watched.page.set_default_timeout(WAIT_MS)
    yield watched
    context.close()
    assert not watched.errors, watched.errors  # no CSP violation, no uncaught error, no failed call on the console


class Markup(HTMLParser):
    """What could run or style inline in a page: scripts without src or with a body, style elements and
    attributes, event-handler attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.inline: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "script":
            source = dict(attrs).get("src")
            self.scripts.append(source or "")
            if not source:
                self.inline.append("<script> without src")
            self._in_script = True
        if tag == "style":
            self.inline.append("<style>")
        self.inline += [f"{tag} {n}=" for n in names if n == "style" or n.startswith("on")]

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("script body")


def test_the_page_lists_the_demo_model_under_a_strict_content_security_policy(demo: Demo, page: Watched) -> None:
    response = page.page.goto(f"{demo.url}/ui")
    assert response is not None and response.status == 200
    policy = response.headers["content-security-policy"]
    assert policy == CONTENT_SECURITY_POLICY and "unsafe-inline" not in policy and "script-src 'self'" in policy
    markup = Markup()
    markup.feed(response.text())
    assert markup.scripts == ["/ui/static/app.js"] and markup.inline == [], markup.inline
    for asset in ("/ui/static/app.js", "/ui/static/vendor/uplot/uPlot.esm.js", "/ui/static/console.css"):
        answer = httpx.get(demo.url + asset)
        assert answer.status_code == 200 and answer.headers["content-security-policy"] == policy, asset
    docs = httpx.get(f"{demo.url}/docs")  # /docs keeps its own page (Swagger UI runs inline script)
    assert docs.status_code == 200 and "content-security-policy" not in docs.headers

    wait_until(lambda: f"Console: {demo.url}/ui" in demo.log.read_text(), timeout=30, what="the demo's address of it")
    row = page.page.locator("tr[data-model=digits]")
    row.wait_for()
    assert row.locator(".live-version").inner_text() == "1"
    assert "0, 1, 2, 3, 4" in row.inner_text() and "serving" in row.inner_text()
    # offline: everything the page loaded and called came from the service itself
    assert page.requests and all(url.startswith(f"{demo.url}/") for url in page.requests), page.requests

    # the policy is enforced: a script injected into the page does not run (and the browser says why)
    with page.page.expect_console_message(lambda m: "Content Security Policy" in m.text):
        page.page.evaluate(
            "() => { const s = document.createElement('script'); s.textContent = 'window.injected = 1';"
            " document.body.append(s); }"
        )
    assert page.page.evaluate("() => window.injected") is None
    assert len(page.csp_violations()) == len(page.errors) == 1, page.errors
    page.errors.clear()


def test_new_classes_show_progress_then_version_2_with_the_figures_the_api_reports(demo: Demo, page: Watched) -> None:
    model_page = page.page
    model_page.goto(f"{demo.url}/ui#/models/digits")
    model_page.locator("tr[data-version='1']").wait_for()
    listing = watch(page.page.context.new_page())
    listing.page.goto(f"{demo.url}/ui")
    listing.page.locator("tr[data-model=digits]").wait_for()

    inputs, labels = demo_digits([5, 6, 7, 8, 9])
    update_id = demo.client.post_samples("digits", inputs, labels)["update_id"]
    assert update_id is not None
    # the running update's progress, on the model's page and in the models list
    model_page.locator(f"tr[data-update-id='{update_id}'] .progress[data-status=running] progress").wait_for()
    listing.page.locator(f"tr[data-model=digits] .progress[data-update-id='{update_id}'] progress").wait_for()
    assert listing.errors == []

    # version 2 appears with its per-class figures, those the API stored with it
    model_page.locator("tr[data-version='2'] .chip[data-class='9']").wait_for()
    stored = next(v for v in demo.client.versions("digits") if v["version"] == 2)
    shown = {
        chip.get_attribute("data-class"): float(chip.get_attribute("data-value") or "nan")
        for chip in model_page.locator("tr[data-version='2'] .chip").all()
    }
    assert shown == stored["metrics"]["per_class_accuracy"] and list(shown) == OLD + NEW

    # the charts: drawn from the figures GET …/metrics reports for the live version (2), the matrix as it is
    # (version 2 is stored a moment before it goes live: the page draws what it read, and catches up at its next poll)
    model_page.wait_for_function(
        "() => document.getElementById('live-version').textContent === '2'"
        " && JSON.parse(document.querySelector('table.heatmap').dataset.matrix).rows.includes(2)"
    )
    metrics = demo.client.metrics("digits")
    assert metrics["live_version"] == 2
    per_class = chart_data(model_page, "chart-per-class")
    at = per_class["x"].index(2)
    assert per_class["x"] == [1, 2] and set(per_class["series"]) == set(OLD + NEW)
    assert {label: values[at] for label, values in per_class["series"].items()} == metrics["per_class_accuracy"]
    assert all(per_class["series"][c][0] is None for c in NEW)  # version 1 knew no 5-9
    lineage = chart_data(model_page, "chart-lineage")
    for series, key in (("ACC", "acc"), ("BWT", "bwt"), ("forgetting", "forgetting")):
        assert math.isclose(lineage["series"][series][lineage["x"].index(2)], metrics[key], abs_tol=1e-12), series
    matrix = model_page.get_attribute("table.heatmap", "data-matrix")
    assert matrix is not None and json.loads(matrix) == metrics["matrix"]
    summary = model_page.locator("#summary-figures").inner_text()
    assert f"ACC {metrics['acc']:.3f}" in summary and f"forgetting {metrics['forgetting']:.3f}" in summary
    # input drift, as GET …/drift reports it (the demo captures nothing: the monitor says so)
    drift = httpx.get(f"{demo.url}/v1/models/digits/drift").json()
    status = model_page.locator("#drift-status")
    status.wait_for()
    assert status.get_attribute("data-status") == drift["status"] == "off"
    assert status.inner_text() == f"{drift['status']}: {drift['detail']}"
    listing.page.close()


def test_a_rejected_version_goes_live_only_by_force_after_the_gate_figures_and_its_broken_class_stands_out(
    demo: Demo, page: Watched
) -> None:
    rejected = demo.client.import_weights("digits", damaged_weights(demo.url, "digits", "3"))
    number = rejected["version"]
    assert rejected["status"] == "rejected" and live_version(demo.client) == 2, rejected

    p = page.page
    p.goto(f"{demo.url}/ui#/models/digits")
    p.locator(f"tr[data-version='{number}'][data-status=rejected] button[data-action=promote]").click()
    dialog = p.locator("#confirm[open]")
    dialog.wait_for()
    figures = p.locator("#confirm-gate").inner_text()
    assert f"rejected version {number}" in figures and "class 3: " in figures and "95 % confidence" in figures
    assert p.locator("#confirm-ok").is_disabled()  # not before the operator says the figures were read
    p.locator("#confirm-cancel").click()
    assert live_version(demo.client) == 2

    p.locator(f"tr[data-version='{number}'] button[data-action=promote]").click()
    p.locator("#confirm-force").check()
    p.locator("#confirm-ok").click()
    p.locator(f"tr[data-version='{number}'][data-status=live]").wait_for()
    assert live_version(demo.client) == number
    assert "by force" in p.locator("#notice").inner_text()
    # class 3 fell when the version went live: listed, and drawn thick with red points at that version
    p.locator(f"#drops li[data-version='{number}'][data-class='3']").wait_for()
    assert p.locator(f"tr[data-version='{number}'] .chip.dropped[data-class='3']").count() == 1


def test_rolling_back_to_version_1_from_the_page_serves_version_1(demo: Demo, page: Watched) -> None:
    p = page.page
    p.goto(f"{demo.url}/ui#/models/digits")
    p.locator("tr[data-version='1'] button[data-action=promote]").click()
    p.locator("#confirm[open]").wait_for()
    assert "does not know 5 classes the live version serves: 5, 6, 7, 8, 9" in p.locator("#confirm-lines").inner_text()
    assert p.locator("#confirm-gate").is_hidden()  # version 1 was not rejected: no force
    p.locator("#confirm-ok").click()
    p.locator("tr[data-version='1'][data-status=live]").wait_for()
    assert live_version(demo.client) == 1
    probe, _ = demo_digits([7], split="test")
    assert demo.client.predict("digits", probe[:5])["version"] == 1  # served, not only recorded


def test_quarantined_samples_are_released_and_deleted_from_the_page(demo: Demo, page: Watched) -> None:
    status = post_flips(demo.client, "digits", digit=1, label="0")  # every 1 posted as 0: a systematic flip
    assert status["status"] == "rejected" and "label screening" in (status["error"] or ""), status
    quarantined = demo.client.quarantine("digits")
    assert len(quarantined) > 10

    p = page.page
    p.goto(f"{demo.url}/ui#/models/digits/quarantine")
    first = quarantined[0]["id"]
    p.locator(f"tr[data-sample='{first}'] input[type=checkbox]").check()
    p.locator("button[data-action=release]").click()
    p.locator("#confirm-ok").click()
    p.locator(f"tr[data-sample='{first}']").wait_for(state="detached")
    after = demo.client.quarantine("digits")
    assert {s["id"] for s in after} == {s["id"] for s in quarantined} - {first}
    assert demo.client.model("digits")["pending"]["per_class"].get("0", 0) >= 1  # back among the pending samples

    p.locator("#quarantine-all").check()
    assert p.locator("#quarantine-selected").inner_text() == f"{len(after)} samples selected"
    p.locator("button[data-action=delete]").click()
    p.locator("#confirm-ok").click()
    p.locator("#quarantine-empty").wait_for()
    assert demo.client.quarantine("digits") == []
