"""Screenshots of the console for the README: ``python -m tests.e2e.screenshots docs`` (or ``make screenshots``).

Starts a real `clserve --demo` in a temporary folder, then, through the API, goes where an operator would look: digits
5-9 learned (the models list caught while the update runs), a version that broke digit 3 rejected by the gate,
promoted by force and rolled back, and digit 1 posted as 7 (quarantined by label screening).  Chromium then takes
the models list, the model's page and the confirmation of a forced promotion.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from service.client import Client
from service.demo import demo_digits
from service.launcher import running_clserve
from tests.e2e.conftest import subprocess_env, wait_until
from tests.e2e.console import damaged_weights, launched_browser, post_flips


def take(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    shots = [out / "console-models.png", out / "console-model.png", out / "console-force.png"]
    with tempfile.TemporaryDirectory() as folder, launched_browser() as browser:
        env = subprocess_env(CL_EPOCHS="30")  # an update long enough to be caught running
        with running_clserve(Path(folder) / "data", args=["--demo"], env=env, ready_timeout=120) as server:
            url = server.url
            with Client(url) as client:
                ready = lambda: bool(client.models()) and client.model("digits")["live_version"] == 1  # noqa: E731
                wait_until(ready, timeout=300, what="the demo's first version")
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.set_default_timeout(120_000)
                page.goto(f"{url}/ui")
                page.locator("tr[data-model=digits]").wait_for()
                inputs, labels = demo_digits([5, 6, 7, 8, 9])
                update = client.post_samples("digits", inputs, labels)["update_id"]
                page.locator("tr[data-model=digits] .progress[data-status=running] progress").wait_for()
                page.wait_for_timeout(2500)  # some progress
                page.screenshot(path=str(shots[0]))
                client.wait_update("digits", update)

                rejected = client.import_weights("digits", damaged_weights(url, "digits", "3"))["version"]
                client.promote("digits", rejected, force=True)
                client.promote("digits", 2)
                post_flips(client, "digits", digit=1, label="7")

                page.goto(f"{url}/ui#/models/digits")
                page.locator(f"#drops li[data-version='{rejected}']").wait_for()
                page.locator("tr[data-sample]").first.wait_for()
                page.wait_for_timeout(500)
                page.screenshot(path=str(shots[1]), full_page=True)
                page.locator(f"tr[data-version='{rejected}'] button[data-action=promote]").click()
                page.locator("#confirm[open]").wait_for()
                page.screenshot(path=str(shots[2]))
    return shots


def main() -> None:
    parser = argparse.ArgumentParser(description="Screenshots of the console (docs/console-*.png).")
    parser.add_argument("out", type=Path, nargs="?", default=Path("docs"))
    for shot in take(parser.parse_args().out):
        print(shot)


if __name__ == "__main__":
    main()
