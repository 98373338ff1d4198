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
    url = f"http://{settings.host}:{settings.port}"
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
    print(WALKTHROUGH.format(url=url), flush=True)


WALKTHROUGH = """
The demo model 'digits' (MLP, 784 floats in [0, 1], or a 28×28 grey PNG/JPEG) is serving digits 0-4 at {url}.
Try:

  clctl models
  clctl demo-data --digits 5-9 --out digits-5-9.npz      # the protocol's train split, as a file
  clctl predict digits --file digits-5-9.npz --limit 3   # a 5-9 digit is not known yet
  clctl samples digits --file digits-5-9.npz             # new classes: the update policy starts an update
  clctl update digits --wait                             # or start one yourself, with a live progress bar
  clctl metrics digits                                   # 0-4 still recognised: held-out accuracy per class
  clctl versions digits
  clctl promote digits 1                                 # roll back to the first version

Docs (offline): {url}/docs
"""
