"""The console on a key-protected `clserve`: without a key the page says that one is needed (401); a key typed into
the page stays in that tab's session storage, out of URLs and logs; the API's scopes decide, and a 403 is shown.

One server for the module (no demo: a small model learns two versions in a second)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from service.client import Client
from tests.e2e.conftest import clserve
from tests.e2e.console import Watched, launched_browser, watch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ADMIN_KEY = "admin-key-for-the-console-0123"
PREDICT_KEY = "predict-key-for-the-console-4567"
WAIT_MS = 30_000


@dataclass
class Server:
    url: str
    admin: Client
    log: Path


def samples(label: str, center: float, seed: int, count: int = 30) -> tuple[list[list[float]], list[str]]:
    rng = random.Random(f"{label}-{seed}")
    return [[center + rng.gauss(0, 0.1) for _ in range(4)] for _ in range(count)], [label] * count


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("console-keys")
    log = folder / "clserve.log"
    keys = json.dumps({ADMIN_KEY: "admin", PREDICT_KEY: "predict"})
    with clserve(folder / "data", log=log, CL_API_KEYS=keys) as url, Client(url, ADMIN_KEY) as admin:
        admin.create_model("tiny", "mlp", [4], options={"hidden": [8]})
        for batch in range(2):  # two versions of classes a and b: one to roll back to
            (a, a_labels), (b, b_labels) = samples("a", -1.0, batch), samples("b", 1.0, batch)
            answer = admin.post_samples("tiny", a + b, a_labels + b_labels)
            update_id = answer["update_id"] or admin.start_update("tiny")["update_id"]  # new classes start one
            done = admin.wait_update("tiny", update_id, timeout=120)
            assert done["status"] == "succeeded", done["error"]
        assert admin.model("tiny")["live_version"] == 2
        yield Server(url, admin, log)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    try:
        with launched_browser() as launched:
            yield launched
    except FileNotFoundError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def page(browser: Browser) -> Iterator[Watched]:
    context = browser.new_context()
    watched = watch(context.new_page())
    watched.page.set_default_timeout(WAIT_MS)
    yield watched
    context.close()
    # refused calls are logged by the browser ("Failed to load resource … 401"); nothing else may be
    unexpected = [e for e in watched.errors if "Failed to load resource" not in e]
    assert not unexpected, unexpected


def use_key(page: Page, key: str) -> None:
    page.locator("#key-input").fill(key)
    page.locator("#key-form button[type=submit]").click()


def test_without_a_key_the_page_says_that_the_service_needs_one(server: Server, page: Watched) -> None:
    page.page.goto(f"{server.url}/ui")
    message = page.page.locator("#message[data-status='401']")
    message.wait_for()
    assert "This service needs an API key (401" in message.inner_text()
    assert "Type a key in the field above" in message.inner_text()
    assert page.page.locator("tr[data-model]").count() == 0


def test_a_typed_key_stays_in_this_tab_and_out_of_urls_and_logs(server: Server, page: Watched) -> None:
    p = page.page
    p.goto(f"{server.url}/ui")
    p.locator("#message[data-status='401']").wait_for()
    use_key(p, PREDICT_KEY)
    p.locator("tr[data-model=tiny]").wait_for()
    assert p.locator("#message").is_hidden()
    assert p.locator("#key-input").input_value() == ""  # not left in the form
    assert p.evaluate("() => Object.values(sessionStorage)") == [PREDICT_KEY]
    assert p.evaluate("() => localStorage.length") == 0 and p.context.cookies() == []
    p.locator("tr[data-model=tiny] a").click()
    p.locator("tr[data-version='1']").wait_for()
    assert PREDICT_KEY not in p.url
    # another tab has no key (session storage is per tab), and the key never reached the server's log
    other = p.context.new_page()
    other.goto(f"{server.url}/ui")
    other.locator("#message[data-status='401']").wait_for()
    other.close()
    assert PREDICT_KEY not in server.log.read_text() and ADMIN_KEY not in server.log.read_text()
    assert not [url for url in page.requests if PREDICT_KEY in url]
    # forgetting it: the next call is refused again
    p.locator("#key-forget").click()
    p.locator("#message[data-status='401']").wait_for()
    assert p.evaluate("() => sessionStorage.length") == 0


def test_the_api_scopes_decide_and_a_403_is_shown(server: Server, page: Watched) -> None:
    p = page.page
    p.goto(f"{server.url}/ui#/models/tiny")
    use_key(p, PREDICT_KEY)  # enough to read the page; promoting needs admin
    p.locator("tr[data-version='1'] button[data-action=promote]").click()
    p.locator("#confirm-ok").click()
    message = p.locator("#message[data-status='403']")
    message.wait_for()
    assert "This API key may not do that (403" in message.inner_text() and "'admin'" in message.inner_text()
    assert server.admin.model("tiny")["live_version"] == 2

    use_key(p, ADMIN_KEY)
    p.locator("tr[data-version='1'] button[data-action=promote]").click()
    p.locator("#confirm-ok").click()
    p.locator("tr[data-version='1'][data-status=live]").wait_for()
    assert server.admin.model("tiny")["live_version"] == 1


DROPS = """async () => {
  const { dropsAtPromotions } = await import("/ui/static/model.js");
  const version = (number, figures, promotions, limit = null) => ({
    version: number,
    metrics: { per_class_accuracy: figures, gate: limit === null ? null : { max_class_drop: limit } },
    promotions,
  });
  return dropsAtPromotions([
    version(1, { a: 0.9, b: 0.8 }, [{ previous: null }]),
    version(2, { a: 0.75, b: 0.75, c: 0.5 }, [{ previous: 1, by: "key-1" }]),
    version(3, { a: 0.1, b: 0.0 }, []),
    version(4, { a: 0.8, b: 0.45 }, [{ previous: 2 }], 0.2),
    version(5, { a: 0.5 }, [{ previous: 4 }, { previous: 1 }]),
  ]);
}"""


def test_a_class_stands_out_when_it_fell_by_more_than_the_gate_limit_as_a_version_went_live(
    server: Server, page: Watched
) -> None:
    """The console's rule, run in the browser on figures chosen for it: a class is marked at a version when it fell
    by more than the per-class limit (the version's recorded max_class_drop, else 0.10) against the version that
    promotion replaced; rises, new classes and versions never promoted are not marked."""
    page.page.goto(f"{server.url}/ui")
    drops = page.page.evaluate(DROPS)
    assert [(d["version"], d["previous"], d["label"], d["limit"]) for d in drops] == [
        (2, 1, "a", 0.1),  # 0.90 → 0.75; b fell 0.05 only, c is new
        (4, 2, "b", 0.2),  # 0.75 → 0.45 (its gate's limit 0.2); a rose; version 3 never went live
        (5, 4, "a", 0.1),  # 0.80 → 0.50, then against version 1 too: 0.90 → 0.50
        (5, 1, "a", 0.1),
    ]
    assert drops[0]["before"] == 0.9 and drops[0]["after"] == 0.75 and drops[0]["by"] == "key-1"
