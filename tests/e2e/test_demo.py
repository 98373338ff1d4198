"""The README's walk-through, end to end, against a real `clserve --demo` process."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.client import Client, ServiceError
from service.demo import demo_digits
from tests.e2e.conftest import clserve, wait_until

OLD, NEW = ["0", "1", "2", "3", "4"], ["5", "6", "7", "8", "9"]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def live_version(client: Client, name: str) -> int | None:
    try:
        return client.model(name)["live_version"]
    except ServiceError:
        return None  # not created yet


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_learns_new_digits_keeps_old_ones_gates_bad_data_and_rolls_back(tmp_path: Path) -> None:
    with clserve(tmp_path / "data", ["--demo"], log=tmp_path / "clserve.log") as url, Client(url) as client:
        wait_until(lambda: live_version(client, "digits") == 1, timeout=300, what="the demo's first version")
        first = client.metrics("digits")["per_class_accuracy"]
        assert sorted(first) == OLD and mean(list(first.values())) > 0.9, first

        # post digits 5-9 (the protocol's train split): new classes, the policy starts an update
        inputs, labels = demo_digits([5, 6, 7, 8, 9])
        answers = list(client.post_samples_chunked("digits", inputs, labels, chunk=len(inputs)))
        assert sorted({c for a in answers for c in a["new_classes"]}) == NEW
        update_id = next(a["update_id"] for a in answers if a.get("update_id"))
        status = client.wait_update("digits", update_id, timeout=300)
        assert status["status"] == "succeeded", status
        report = client.metrics("digits")
        assert report["live_version"] == 2
        per_class = report["per_class_accuracy"]
        assert mean([per_class[c] for c in NEW]) > 0.85, per_class  # new classes learned (held-out data)
        assert mean([per_class[c] for c in OLD]) > 0.80, per_class  # old classes kept (stated bound)
        assert report["bwt"] is not None and report["matrix"]["rows"] == [1, 2]

        # a label-shuffled update is rejected by the gate; version 2 keeps serving
        inputs, labels = demo_digits(list(range(10)))
        wrong = [str((int(y) + 3) % 10) for y in labels[:1500]]
        list(client.post_samples_chunked("digits", inputs[:1500], wrong))
        bad = client.wait_update("digits", client.start_update("digits")["update_id"], timeout=300)
        assert bad["status"] == "rejected" and "forgetting gate" in bad["error"], bad
        probe, _ = demo_digits([7], split="test")
        answer = client.predict("digits", probe[:20])
        assert answer["version"] == 2
        assert mean([p["label"] == "7" for p in answer["predictions"]]) > 0.7

        # roll back: the old version is served again (it knows only 0-4)
        client.promote("digits", 1)
        answer = client.predict("digits", probe[:20])
        assert answer["version"] == 1 and {p["label"] for p in answer["predictions"]} <= set(OLD)
        versions = client.versions("digits")
        assert [v["status"] for v in versions] == ["live", "candidate", "rejected"]
