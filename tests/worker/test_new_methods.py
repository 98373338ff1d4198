"""The service runs every registered method by name (LwF, SI and DER++ included), DER++'s own buffer honours
deletion requests, and a method that keeps samples is refused when the exemplar memory is switched off."""

from pathlib import Path

import pytest
import torch

from cl_core.data import load_mnist5k
from cl_core.methods import METHODS
from registry import LocalStore, ModelRecord, Store, UpdateRecord
from worker.config import WorkerSettings
from worker.learners import build_learner, stored_learner, validate_method
from worker.pipeline import load_version, run_update
from worker.scheduling import new_update_id

SETTINGS = WorkerSettings(epochs=2, device="cpu", max_forgetting=1.0, max_class_drop=1.0)


@pytest.fixture(scope="module")
def digits() -> dict[int, torch.Tensor]:
    train = load_mnist5k().train
    return {d: train.inputs[train.labels == d][:40] for d in range(4)}


def make_store(tmp_path: Path) -> Store:
    store = LocalStore(tmp_path / "store")
    store.create_model(ModelRecord(name="digits", architecture="mlp", input_shape=[784], classes=[], options={}))
    return store


def post(store: Store, digits: dict[int, torch.Tensor], which: list[int]) -> None:
    x = torch.cat([digits[d] for d in which])
    store.append_samples("digits", x, [str(d) for d in which for _ in range(len(digits[d]))], 0.2)


def update(store: Store, method: str, settings: WorkerSettings = SETTINGS) -> str:
    record = UpdateRecord(update_id=new_update_id(), model="digits", method=method, triggered_by="test")
    store.put_update(record)
    result = run_update(store, "digits", record.update_id, settings)
    assert result.status in ("succeeded", "rejected"), result.error
    return result.status


def test_every_registered_method_is_a_valid_update_method() -> None:
    for base in METHODS:
        assert validate_method(base, SETTINGS) == base
        assert validate_method(f"{base}+wa", SETTINGS) == f"{base}+wa"
    with pytest.raises(ValueError, match="own memory"):
        validate_method("derpp+replay", SETTINGS)
    private = WorkerSettings(device="cpu", exemplar_memory=False)
    with pytest.raises(ValueError, match="CL_EXEMPLAR_MEMORY"):
        validate_method("derpp", private)
    assert validate_method("lwf", private) == "lwf"


def test_derpp_buffer_is_the_memory_total_and_the_schedule_a_setting() -> None:
    settings = WorkerSettings(device="cpu", memory_total=300, replay="concat", replay_ratio=0.5)
    derpp = build_learner("derpp", settings)
    assert derpp.method.hparams()["buffer_size"] == 300 and derpp.memory is None
    replay = build_learner("finetune+replay", settings)
    assert replay.memory is not None and replay.memory.replay == "concat" and replay.memory.replay_ratio == 0.5
    assert replay.memory.balance == "class-task" and replay.memory.per_class == 200


@pytest.mark.parametrize("method", ["lwf+wa", "si", "derpp+wa"])
def test_the_pipeline_runs_the_new_methods_over_two_updates(
    tmp_path: Path, digits: dict[int, torch.Tensor], method: str
) -> None:
    store = make_store(tmp_path)
    post(store, digits, [0, 1])
    update(store, method)
    post(store, digits, [2, 3])
    update(store, method)
    loaded = load_version(store, "digits", 2)
    assert loaded.learner_hparams["name"] == method and loaded.model.num_classes == 4
    assert loaded.learner_state  # the method's state was committed with the version


def test_deleted_samples_leave_the_derpp_buffer(tmp_path: Path, digits: dict[int, torch.Tensor]) -> None:
    from worker.deletion import forget_samples

    store = make_store(tmp_path)
    post(store, digits, [0, 1])
    update(store, "derpp", WorkerSettings(epochs=2, device="cpu", memory_total=20))
    held = load_version(store, "digits", 1).learner_state["method.buffer.ids"].tolist()
    assert len(held) == 20 and all(i > 0 for i in held)
    victims = sorted({str(i) for i in held[:4]})
    copies = sum(str(i) in victims for i in held)  # a sample offered in several epochs may be stored twice
    result = forget_samples(store, "digits", victims, SETTINGS)
    assert result.exemplars == copies and result.versions == 1
    after = load_version(store, "digits", 1).learner_state["method.buffer.ids"].tolist()
    assert not set(map(int, victims)) & set(after) and len(after) == 20 - copies


def test_the_service_keeps_mas_importance_a_mean_so_repeated_traffic_does_not_grow_the_penalty() -> None:
    """cl_core's MAS sums per task as the paper does; the service's updates re-measure one deployed distribution
    (captured traffic every update), so its MAS (auto's companion, `mas`, `slnid`) averages unless told to sum."""
    from cl_core.methods import MAS
    from cl_core.models import ModelSpec, build_model

    model = build_model(ModelSpec("mlp", (6,), ["a", "b"], {"hidden": [5]}), seed=0)
    traffic = torch.randn(20, 6, generator=torch.Generator().manual_seed(0))
    for method in ("auto", "mas", "slnid"):
        learner = build_learner(method, SETTINGS)
        mas = learner.unlabeled if method == "auto" else learner.method
        assert isinstance(mas, MAS) and mas.accumulate == "mean"
        learner.observe(model, traffic)
        once = {k: v.clone() for k, v in mas.importance.items()}
        for _ in range(3):
            learner.observe(model, traffic)
        for name, omega in once.items():
            torch.testing.assert_close(mas.importance[name], omega)
    summing = build_learner("auto", SETTINGS.model_copy(update={"mas_accumulate": "sum"}))
    assert isinstance(summing.unlabeled, MAS) and summing.unlabeled.accumulate == "sum"


def test_the_service_bounds_the_past_penalties_a_method_keeps_per_experience() -> None:
    """Every update is an experience: R-EWC's exact per-experience terms would grow a version's state with the
    history (#15), so the service keeps `max_penalty_terms` of them (the older ones folded)."""
    from cl_core.experience import Experience
    from cl_core.methods import REWC
    from cl_core.models import ModelSpec, build_model

    model = build_model(ModelSpec("mlp", (6,), ["a", "b"], {"hidden": [5]}), seed=0)
    settings = SETTINGS.model_copy(update={"max_penalty_terms": 2})
    method = build_learner("rewc", settings).method
    assert isinstance(method, REWC) and method.max_terms == 2
    assert isinstance(build_learner("rewc", SETTINGS.model_copy(update={"max_penalty_terms": None})).method, REWC)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        method.prepare(model)  # training happens in the rotated basis; consolidation on the plain model
        method.finish(model)
        method.consolidate(model, Experience(torch.randn(16, 6, generator=g), torch.randint(0, 2, (16,), generator=g)))
    assert method.terms and all(len(terms) <= 2 for terms in method.terms.values())
    assert build_learner("rewc", SETTINGS, {"max_terms": 4}).method.max_terms == 4  # type: ignore[attr-defined]


def test_a_learner_stored_before_mas_summed_is_rebuilt_as_the_mean_it_was() -> None:
    """A stored version's learner settings without ``accumulate`` were written when MAS averaged: rebuilt from them
    (the worker's fallback when today's settings change the learner's parts) it averages still; settings that name
    it keep theirs."""
    from cl_core.methods import MAS

    for method in ("auto", "mas", "slnid"):
        hparams = build_learner(method, SETTINGS).hparams()
        part = "unlabeled" if method == "auto" else "method"
        legacy = {**hparams, part: {k: v for k, v in hparams[part].items() if k != "accumulate"}}
        rebuilt = stored_learner(legacy)
        mas = rebuilt.unlabeled if method == "auto" else rebuilt.method
        assert isinstance(mas, MAS) and mas.accumulate == "mean"
        summing = {**hparams, part: {**hparams[part], "accumulate": "sum"}}
        again = stored_learner(summing)
        assert (again.unlabeled if method == "auto" else again.method).accumulate == "sum"  # type: ignore[union-attr]
    assert stored_learner(build_learner("online-ewc", SETTINGS).hparams()).name == "online-ewc"


@pytest.mark.parametrize("bad", [0, -1, "many", 2.5])
def test_a_hostile_penalty_term_bound_is_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        WorkerSettings(max_penalty_terms=bad)
