"""The forgetting gate against poisoned labels (issue 13), through the real pipeline on both stores.

The protocol's data (MNIST-5k train split for posts, test split for accuracy), fixed seeds, the attacks and controls
of `clbench poison` with fewer epochs: a model that learned digits 0-4 (and then 5-9) is exported once and imported
into a fresh store of each backend for every case.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cl_core.data import MNIST5k, load_mnist5k
from clbench.poison import Base, Case, Outcome, build_bases, cases, run_case
from registry import LocalStore, Store
from worker.config import WorkerSettings

SETTINGS = WorkerSettings(device="cpu", seed=0)  # the service's training defaults (10 epochs)
SEED = 0


@pytest.fixture(scope="module")
def data() -> MNIST5k:
    return load_mnist5k()


@pytest.fixture(scope="module")
def bases(data: MNIST5k) -> dict[Base, bytes]:
    return build_bases(SETTINGS, data.train)


@pytest.fixture(params=["local", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "local":
        s: Store = LocalStore(tmp_path / "store")
    else:
        from registry.redis_store import RedisStore

        s = RedisStore(request.getfixturevalue("redis_url"))
    yield s
    s.close()


def case(data: MNIST5k, name: str) -> Case:
    [found] = [c for c in cases(data.train, SEED) if c.name.startswith(name)]
    return found


def attack(data: MNIST5k, bases: dict[Base, bytes], store: Store, name: str) -> Outcome:
    chosen = case(data, name)
    return run_case(chosen, bases[chosen.base], store, SETTINGS, data.test, SEED)


def test_a_whole_class_relabelled_as_another_never_goes_live(
    data: MNIST5k, bases: dict[Base, bytes], store: Store
) -> None:
    outcome = attack(data, bases, store, "relabel digit 1 as 7")
    assert not outcome.promoted and outcome.status == "rejected", outcome
    assert outcome.flipped_quarantined == outcome.flipped == 400
    assert outcome.test_after == outcome.test_before  # the live version is the one before
    assert "label screening" in (outcome.error or "")


@pytest.mark.slow
def test_a_25_percent_flip_after_the_classes_were_learned_is_quarantined(
    data: MNIST5k, bases: dict[Base, bytes], store: Store
) -> None:
    outcome = attack(data, bases, store, "25 % of 3 as 8, after")
    assert outcome.promoted and outcome.status == "succeeded", outcome
    assert outcome.flipped_quarantined == outcome.flipped == 105  # most of the "8"s are 3s: the group goes
    assert outcome.clean_quarantined == 0
    assert outcome.test_before["3"] - outcome.test_after["3"] <= 0.05


@pytest.mark.slow
@pytest.mark.parametrize("name", ["25 % of 3 as 8, with new", "(b) split over ten posts"])
def test_a_25_percent_flip_into_a_class_that_arrives_is_quarantined_the_rest_learned(
    data: MNIST5k, bases: dict[Base, bytes], store: Store, name: str
) -> None:
    outcome = attack(data, bases, store, name)
    assert outcome.promoted and outcome.status == "succeeded", outcome
    assert outcome.flipped_quarantined >= 0.8 * outcome.flipped, outcome
    assert outcome.clean_quarantined <= 0.02 * outcome.posted, outcome
    assert set(outcome.test_after) == {str(d) for d in range(10)}  # 5-9 learned
    assert min(outcome.test_after[str(d)] for d in range(5, 10)) > 0.7, outcome.test_after
    assert outcome.test_before["3"] - outcome.test_after["3"] <= 0.05, outcome


@pytest.mark.slow
def test_a_label_shuffle_is_quarantined_and_the_gate_alone_rejects_it_by_a_wide_margin(
    data: MNIST5k, bases: dict[Base, bytes], store: Store
) -> None:
    screened = attack(data, bases, store, "label shuffle (")
    assert not screened.promoted and screened.quarantined >= 0.95 * screened.posted, screened
    store.delete_model("digits")
    gate_only = attack(data, bases, store, "label shuffle, screening off")
    assert gate_only.status == "rejected" and not gate_only.promoted, gate_only
    assert gate_only.gate_drop is not None and gate_only.gate_drop >= 2 * SETTINGS.max_forgetting, gate_only
    assert gate_only.failed_classes, gate_only  # the per-class rule names the classes that collapsed


@pytest.mark.slow
@pytest.mark.parametrize("name", ["clean: new classes 5-9", "clean: digit 3 again", "clean: digit 3 rotated"])
def test_clean_updates_raise_no_false_alarm(data: MNIST5k, bases: dict[Base, bytes], store: Store, name: str) -> None:
    outcome = attack(data, bases, store, name)
    assert outcome.promoted and outcome.status == "succeeded", outcome
    assert outcome.quarantined == 0 and outcome.failed_classes == [], outcome


@pytest.mark.slow
def test_a_deliberate_relabel_with_the_admin_flag_passes_screening(
    data: MNIST5k, bases: dict[Base, bytes], store: Store
) -> None:
    outcome = attack(data, bases, store, "admin relabel")
    assert outcome.quarantined == 0, outcome
    # trained: the gate sees class 1 collapse on the lineage's trusted data and says so; an admin promotes by force
    assert outcome.status == "rejected" and outcome.failed_classes == ["1"], outcome
    [version] = [v for v in store.list_versions("digits") if v.status == "rejected"]
    assert store.promote("digits", version.version, by="admin")
