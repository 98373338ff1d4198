"""`hparams` of POST /v1/models/{name}/updates (what an update fixes instead of choosing), and how an update that
chose shows it: the version's train_config, the forgetting report, /metrics."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.clctl import _trained
from tests.service.conftest import blobs, create, post_samples, wait_update

CHOOSING = {
    "train_budget": "validation",
    "selection": True,
    "budget_min_steps": 10,
    "budget_max_steps": 60,
    "budget_eval_every": 5,
    "budget_patience": 3,
    "memory_per_class": 20,
    "policy_min_samples_per_new_class": 1000,
}

HOSTILE: list[tuple[Any, str]] = [
    ({"lr": 0.1}, "unknown hyper-parameter"),
    ({"../../etc/passwd": 1}, "unknown hyper-parameter"),
    ({"lam": -1}, "finite non-negative"),
    ({"lam": 1e300}, "at most"),
    ({"lam": 10**400}, "out of range"),
    ({"gamma": 2}, "at most 1"),
    ({"replay_repeat": 0.5}, "integer from 1 to 16"),
    ({"replay_repeat": 10**6}, "integer from 1 to 16"),
    ({"lam": "100"}, ""),
    ({"lam": True}, ""),
    ({"lam": None}, ""),
    ({"lam": {"nested": 1}}, ""),
    ({f"k{i}": 1 for i in range(9)}, ""),
    ([1, 2], ""),
    ("lam=1", ""),
]


def learn(client: TestClient, classes: list[str], seed: int, **body: Any) -> dict[str, Any]:
    """Post blobs of ``classes`` and run one update on them (the policy waits: CHOOSING sets it so)."""
    post_samples(client, "m", *blobs(classes, 30, seed=seed))
    accepted = client.post("/v1/models/m/updates", json=body)
    assert accepted.status_code == 202, accepted.text
    return wait_update(client, "m", accepted.json()["update_id"])


@pytest.mark.parametrize(("hparams", "says"), HOSTILE)
def test_hostile_hparams_are_refused_and_nothing_is_queued(client: TestClient, hparams: Any, says: str) -> None:
    create(client)
    post_samples(client, "m", *blobs(["a"], 3))
    response = client.post("/v1/models/m/updates", json={"method": "auto", "hparams": hparams})
    assert response.status_code == 422, response.text
    body = response.json()
    assert "hparams" in f"{body['field']} {body['detail']}" and says in body["detail"], body
    assert len(body["detail"]) <= 1000
    assert client.get("/v1/models/m/updates").json()["updates"] == []


def test_hparams_that_do_not_fit_the_method_are_refused(client: TestClient) -> None:
    create(client)
    post_samples(client, "m", *blobs(["a"], 3))
    for method, hparams in (("finetune+replay", {"lam": 1}), ("mas", {"gamma": 0.5}), ("ewc", {"replay_repeat": 2})):
        response = client.post("/v1/models/m/updates", json={"method": method, "hparams": hparams})
        assert response.status_code == 422 and response.json()["field"] == "hparams", response.json()


def test_an_update_uses_the_values_it_was_given_and_shows_its_choice(make_client: Any) -> None:
    client = make_client(**CHOOSING)
    create(client)
    assert learn(client, ["a", "b", "c"], 0)["status"] == "succeeded"
    status = learn(client, ["d", "e"], 3, hparams={"lam": 7.5, "replay_repeat": 2})
    assert status["hparams"] == {"lam": 7.5, "replay_repeat": 2.0}
    assert status["status"] in ("succeeded", "rejected"), status
    training = status["metrics"]["training"]
    assert training["lam"] == 7.5 and training["replay_repeat"] == 2 and training["candidates"] == 1
    version = client.get(f"/v1/models/m/versions/{status['version']}").json()
    record = version["train_config"]["training"]
    assert record["lam"] == 7.5 and "fixed" in record["reason"] and len(record["candidates"]) == 1
    assert version["hyperparameters"]["method"]["lam"] == 7.5
    assert "λ=7.5 replay×2" in _trained(version["train_config"])


def test_an_update_that_chose_reports_it_in_the_version_the_report_and_metrics(make_client: Any) -> None:
    client = make_client(**CHOOSING, max_forgetting=0.5)
    create(client)
    assert learn(client, ["a", "b", "c"], 0)["status"] == "succeeded"
    status = learn(client, ["d", "e"], 3)
    assert status["status"] == "succeeded", status
    record = client.get("/v1/models/m/versions/2").json()["train_config"]["training"]
    tried = len(record["candidates"])
    assert record["selection"] == "adaptive" and tried in (2, 3)
    assert sum(c["chosen"] for c in record["candidates"]) == 1
    assert client.get("/v1/models/m/metrics").json()["training"] == record
    text = client.get("/metrics").text
    assert f'cl_update_candidates_total{{model="m"}} {1.0 + tried}' in text  # 1 for the first version
    assert f'cl_update_chosen_lambda{{model="m"}} {float(record["lam"])}' in text
    assert f"best of {tried}" in _trained(client.get("/v1/models/m/versions/2").json()["train_config"])
