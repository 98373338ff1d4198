"""clctl and the Python client against the application (the client's HTTP goes through the test transport)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from service import clctl
from service.client import Client, ServiceError
from tests.service.conftest import blobs


@pytest.fixture
def cli(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setattr(clctl, "client", lambda: Client(http=client))
    return CliRunner()


def test_a_session_with_clctl(cli: CliRunner, tmp_path: Path) -> None:
    x, y = blobs(["a", "b"], 30)
    data = tmp_path / "data.npz"
    np.savez(data, inputs=np.asarray(x, dtype=np.float32), labels=np.asarray(y))
    steps = [
        ["create", "m", "--input-shape", "8", "--options", '{"hidden": [16]}'],
        ["samples", "m", "--file", str(data), "--chunk", "1000"],
        ["models"],
        ["update", "m", "--wait"],
        ["predict", "m", "--file", str(data), "--limit", "3", "--top-k", "2"],
        ["versions", "m"],
        ["metrics", "m"],
        ["promote", "m", "1"],
    ]
    outputs = []
    for args in steps:
        result = cli.invoke(clctl.app, args)
        outputs.append(result.output)
        assert result.exit_code in (0, 1), (args, result.output)
    assert "accepted 60" in outputs[1] and "new classes: ['a', 'b']" in outputs[1]
    assert "version 1 is live" in outputs[-1]
    assert "held-out accuracy" in outputs[6]
    bad = cli.invoke(clctl.app, ["promote", "m", "42"])
    assert bad.exit_code == 1 and "404" in bad.output


def test_csv_files_and_demo_data(cli: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "digits.npz"
    result = cli.invoke(clctl.app, ["demo-data", "--digits", "5-6", "--out", str(out)])
    assert result.exit_code == 0, result.output
    with np.load(out) as data:
        assert data["inputs"].shape == (800, 784) and set(data["labels"].tolist()) == {"5", "6"}
    csv = tmp_path / "x.csv"
    csv.write_text("label,a,b\nx,1,2\n,3,4\n")
    inputs, labels = clctl.load_file(csv)
    assert inputs.tolist() == [[1.0, 2.0], [3.0, 4.0]] and labels == ["x", None]


def test_client_raises_with_field_and_index(client: TestClient) -> None:
    api = Client(http=client)
    api.create_model("m", "mlp", [8], options={"hidden": [4]})
    with pytest.raises(ServiceError) as info:
        api.post_samples("m", [[0.0] * 8, [0.0] * 7], ["a", "a"])
    assert info.value.status == 422 and info.value.field == "input" and info.value.index == 1


def test_operator_architectures_by_import_path(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(architectures={"tiny": "tests.service.custom_architecture:tiny_body"})
    body = {"name": "t", "architecture": "tiny", "input_shape": [8], "options": {"width": 6}}
    assert client.post("/v1/models", json=body).status_code == 201


def test_the_client_sends_numpy_files_and_json_only_when_it_must(make_client: Callable[..., TestClient]) -> None:
    client = make_client(policy_min_samples_per_new_class=10**6)  # one update, started below
    sent: list[str] = []
    client.event_hooks["request"].append(lambda request: sent.append(request.headers.get("content-type", "")))
    binary, plain = Client(http=client), Client(http=client, binary=False)
    plain.create_model("m", "mlp", [8], options={"hidden": [16]})
    x, y = blobs(["a", "b"], 30)
    answer = binary.post_samples("m", np.asarray(x), [7 if label == "a" else None for label in y])
    assert sent[-1] == "application/x-npz" and (answer["labeled"], answer["unlabeled"]) == (30, 30)
    answer = binary.post_samples("m", x, y)
    assert sent[-1] == "application/x-npz" and answer["new_classes"] == ["a", "b"]
    assert binary.wait_update("m", binary.start_update("m")["update_id"])["status"] == "succeeded"
    assert binary.predict("m", x[:5], top_k=2) == plain.predict("m", x[:5], top_k=2)
    assert sent[-2:] == ["application/x-npy", "application/json"]
    with pytest.raises(ServiceError) as ragged:  # no array: sent as JSON, so that the service names the item
        binary.predict("m", [x[0], x[1][:3]])
    assert sent[-1] == "application/json" and (ragged.value.field, ragged.value.index) == ("inputs", 1)
    with pytest.raises(ServiceError) as boolean:
        binary.post_samples("m", x[:2], ["a", True])
    assert sent[-1] == "application/json" and (boolean.value.field, boolean.value.index) == ("label", 1)
