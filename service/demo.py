"""``clserve --demo``: the 'digits' model, created and trained through the service's own ingestion path.

Digits 0-4 of the protocol's *train* split are posted as samples (the service holds out a share of each class,
so the forgetting report has data; the protocol's test split stays unseen), the update policy trains the first
version, and the walk-through is printed.
"""

from __future__ import annotations

import logging
import time

import uvicorn

from service.client import Client, ServiceError
from service.gc_tuning import freeze_heap
from service.settings import Settings

log = logging.getLogger("demo")
DEMO_MODEL = "digits"
DEMO_PREPROCESSING = {"mode": "L", "size": [28, 28], "scale": [0.0, 1.0], "mean": [0.0], "std": [1.0]}
"""MNIST as the protocol scales it: 28×28 grey, pixel / 255, row by row into the 784 inputs."""


def demo_digits(digits: list[int], split: str = "train") -> tuple[list[list[float]], list[str]]:
    """Inputs (784 floats in [0, 1]) and labels of the given digits from the protocol's MNIST-5k split."""
    from cl_core.data import load_mnist5k

    data = load_mnist5k()
    part = data.train if split == "train" else data.test
    keep = [i for i, y in enumerate(part.labels.tolist()) if y in digits]
    return part.inputs[keep].tolist(), [str(int(part.labels[i])) for i in keep]


def run_demo(server: uvicorn.Server, settings: Settings) -> None:
    while not server.started:
        time.sleep(0.1)
    url = settings.client_url(bound_port(server))
    key = next(iter(k for k, scope in settings.api_keys.items() if scope == "admin"), None)
    with Client(url, key) as client:
        try:
            client.model(DEMO_MODEL)
            log.info("the demo model %r exists already; serving it", DEMO_MODEL)
        except ServiceError:
            client.create_model(
                DEMO_MODEL, "mlp", [784], options={"hidden": [400, 400]}, preprocessing=DEMO_PREPROCESSING
            )
            inputs, labels = demo_digits([0, 1, 2, 3, 4])
            # one request: the update policy then starts exactly one update, on all of it
            update_id = client.post_samples(DEMO_MODEL, inputs, labels).get("update_id")
            if update_id is None:
                update_id = client.start_update(DEMO_MODEL)["update_id"]
            status = client.wait_update(DEMO_MODEL, update_id)
            log.info(
                "first version of %r: %s, held-out accuracy %s",
                DEMO_MODEL,
                status["status"],
                status["metrics"].get("accuracy"),
            )
    if settings.gc_freeze:
        freeze_heap()  # what the demo loaded (the data set's modules) stays: out of the collector's view too
    print(walkthrough(url, with_key=bool(settings.api_keys)), flush=True)


def bound_port(server: uvicorn.Server) -> int | None:
    """The port the server listens on (CL_PORT=0 lets the system choose one), or None when it cannot tell."""
    for listener in getattr(server, "servers", []):
        for sock in listener.sockets:
            return int(sock.getsockname()[1])
    return None


# The README's walk-through ("Walk-through: teach the demo model five new digits") lists the same commands;
# tests/e2e/test_demo.py runs them as written and checks that both lists agree.
WALKTHROUGH_COMMANDS = [
    ("clctl models", "digits: live version 1, classes 0, 1, 2, 3, 4"),
    ("clctl demo-data --digits 5-9 --out digits-5-9.npz", "the protocol's train split of 5-9, as a file"),
    ("clctl predict digits --file digits-5-9.npz --limit 3", "a 5-9 digit is still called 0-4"),
    ("clctl samples digits --file digits-5-9.npz --wait", "new classes: the update policy starts one update"),
    ("clctl metrics digits", "held-out accuracy per class: 5-9 learned, 0-4 kept"),
    ("clctl versions digits", "lineage, method, samples, metrics, who promoted"),
    ("clctl promote digits 1", "roll back (promoting an older version)"),
]


def walkthrough(url: str, *, with_key: bool = False) -> str:
    """What ``clserve --demo`` prints once the model serves: the commands to try, pointed at ``url``."""
    lines = [
        "",
        "The demo model 'digits' (MLP, 784 floats in [0, 1], or a 28×28 grey PNG/JPEG) is serving digits 0-4 at "
        f"{url}.",
        "In another terminal:",
        "",
    ]
    rows = [(f"export CL_URL={url}", "where clctl finds this service")]
    if with_key:
        rows.append(("export CL_API_KEY=...", "a key of CL_API_KEYS with admin scope"))
    rows += WALKTHROUGH_COMMANDS
    width = max(len(command) for command, _ in rows) + 2
    lines += [f"  {command:<{width}}# {comment}" for command, comment in rows]
    lines += ["", f"Console: {url}/ui", f"Docs (offline): {url}/docs", ""]
    return "\n".join(lines)
