"""clctl and the Python client against the application (the client's HTTP goes through the test transport)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from service import clctl
from service.client import Client, ServiceError
from tests.e2e.conftest import free_port, subprocess_env
from tests.service.conftest import blobs


def one_line_error(output: str) -> bool:
    """The output is one line starting with 'error: ', without a traceback."""
    lines = output.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in output


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
    assert "accepted 60" in outputs[1] and "new classes: a, b" in outputs[1]
    assert "version 1 is live" in outputs[-1]
    assert "held-out accuracy" in outputs[6]
    bad = cli.invoke(clctl.app, ["promote", "m", "42"])
    assert bad.exit_code == 1 and one_line_error(bad.output) and "404" in bad.output


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


def test_clctl_promote_needs_force_for_a_rejected_version_and_lists_the_quarantine(make_client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    client = make_client(max_forgetting=0.0, max_class_drop=0.0, screening=False)
    monkeypatch.setattr(clctl, "client", lambda: Client(http=client))
    cli = CliRunner()
    api = Client(http=client)
    api.create_model("m", "mlp", [8], options={"hidden": [16]})
    x, y = blobs(["a", "b", "c"], 60)
    api.wait_update("m", api.post_samples("m", x, y)["update_id"], timeout=60)
    shifted = {"a": "b", "b": "c", "c": "a"}
    x, y = blobs(["a", "b", "c"], 40, seed=5)
    api.post_samples("m", x, [shifted[v] for v in y])
    status = api.wait_update("m", api.start_update("m")["update_id"], timeout=60)
    assert status["status"] == "rejected", status
    refused = cli.invoke(clctl.app, ["promote", "m", str(status["version"])])
    assert refused.exit_code == 1 and "forgetting gate" in refused.output and "--force" in refused.output
    assert api.model("m")["live_version"] == 1
    forced = cli.invoke(clctl.app, ["promote", "m", str(status["version"]), "--force"])
    assert forced.exit_code == 0, forced.output
    assert "gate failed" in forced.output and "forced past the gate" in forced.output
    listed = cli.invoke(clctl.app, ["quarantine", "m"])
    assert listed.exit_code == 0 and "0 samples in quarantine" in listed.output
    released = cli.invoke(clctl.app, ["quarantine", "m", "--release", "12345"])
    assert released.exit_code == 0 and "released 0 of 1" in released.output


def test_a_file_posted_in_chunks_makes_one_update_on_all_of_it(
    cli: CliRunner, client: TestClient, tmp_path: Path
) -> None:
    x, y = blobs(["a", "b"], 30)
    data = tmp_path / "data.npz"
    np.savez(data, inputs=np.asarray(x, dtype=np.float32), labels=np.asarray(y))
    assert cli.invoke(clctl.app, ["create", "m", "--input-shape", "8", "--options", '{"hidden": [16]}']).exit_code == 0
    # 7 chunks of at most 9: the policy (20 samples per new class) would start an update after the 5th chunk alone
    result = cli.invoke(clctl.app, ["samples", "m", "--file", str(data), "--chunk", "9", "--wait"])
    assert result.exit_code == 0, result.output
    assert "accepted 60" in result.output and "succeeded: version 1" in result.output
    (update,) = client.get("/v1/models/m/updates").json()["updates"]
    assert update["status"] == "succeeded"
    samples = client.get("/v1/models/m/versions/1").json()["samples"]
    assert samples["labeled"] + samples["held_out"] == 60


def test_errors_are_one_line_and_a_non_zero_exit(cli: CliRunner, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    no_inputs = tmp_path / "no-inputs.npz"
    np.savez(no_inputs, labels=np.asarray(["a"]))
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("a,b\n1,x\n")
    cases = {
        ("samples", "m", "--file", str(tmp_path / "missing.npz")): "missing.npz: no such file",
        ("samples", "m", "--file", str(tmp_path / "data.txt")): "expected a .npz or .csv file",
        ("samples", "m", "--file", str(garbage)): "cannot read it as npz",
        ("samples", "m", "--file", str(no_inputs)): "no array 'inputs'",
        ("predict", "m", "--file", str(bad_csv)): "cannot read it as csv",
        ("predict", "m", "--input", "[1, 2"): "--input is not valid JSON",
        ("create", "m", "--input-shape", "8", "--options", "{"): "--options is not valid JSON",
        ("create", "m", "--input-shape", "eight"): "--input-shape must be comma-separated integers",
        ("demo-data", "--digits", "5-x"): "--digits must be a range",
        ("demo-data", "--digits", "7-12"): "--digits must name digits 0-9",
        ("demo-data", "--split", "validation"): "--split must be 'train' or 'test'",
        ("demo-data", "--digits", "5", "--out", str(tmp_path / "no" / "such" / "dir.npz")): "No such file",
        ("models",): None,  # the model list works: the baseline
        ("versions", "nope"): "404",
        ("update", "nope", "--wait"): "404",
    }
    for args, expected in cases.items():
        result = cli.invoke(clctl.app, list(args))
        if expected is None:
            assert result.exit_code == 0, result.output
            continue
        assert result.exit_code == 1, (args, result.output)
        assert one_line_error(result.output) and expected in result.output, (args, result.output)


def test_an_unreachable_service_is_one_line_naming_the_address(tmp_path: Path) -> None:
    """As a user runs it: a real process, nothing listening at the address."""
    url = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "service.clctl", "models"],
        capture_output=True,
        text=True,
        timeout=60,
        env=subprocess_env(CL_URL=url),
        check=False,
    )
    assert result.returncode == 1 and result.stdout == "", result
    assert one_line_error(result.stderr), result.stderr
    assert f"cannot reach the service at {url}" in result.stderr and "CL_URL" in result.stderr


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
