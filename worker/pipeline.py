"""One update, start to finish: load the live version → claim pending samples → grow the head for new classes →
train and consolidate with cl_core → evaluate on held-out data → commit the version → acknowledge the samples →
promote if the forgetting gate passes.

The same function runs in the embedded executor's thread and in a Celery task.  It holds the model's update lock
for its whole run (`worker.locking`), commits and acknowledges with the lock's fencing token, and records progress
in the store so every API replica can report it; its status changes go through `worker.lifecycle` and its
promotion through `worker.promotion`.  A crash before the acknowledgement leaves the samples pending; a crash
before the commit leaves nothing behind; a crash after the commit is finished from the committed version by the
next attempt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from cl_core.experience import Experience
from cl_core.labels import natural_order
from cl_core.learner import Learner
from cl_core.models import Classifier, ModelSpec, build_model, grow_classes
from registry import SampleSet, Store, StoreUnavailable, UpdateRecord, VersionRecord
from registry import tensors as st
from worker import lifecycle
from worker.claims import prepare_claim
from worker.config import WorkerSettings
from worker.evaluation import Baseline, EvaluationData, logits_of, version_metrics
from worker.history import history_of
from worker.learners import build_learner, stored_learner
from worker.lifecycle import Outcome
from worker.locking import HeldLock, LockLost, task_owner, update_lock, update_owner
from worker.promotion import auto_promote, trusted_live_version
from worker.retention import prune_versions
from worker.selection import Fixed, fit_update

__all__ = ["Loaded", "LockLost", "UpdateCancelled", "import_weights", "load_version", "run_update"]

log = logging.getLogger(__name__)


class UpdateCancelled(Exception):
    """The update was cancelled between batches; nothing was committed."""


@dataclass
class Loaded:
    """A model version in memory, ready to train or serve."""

    version: int | None
    spec: ModelSpec
    model: Classifier
    learner_hparams: dict[str, Any]
    learner_state: dict[str, torch.Tensor]


def load_version(store: Store, name: str, version: int | None, seed: int = 0) -> Loaded:
    """A stored version (or, for None, a freshly initialised model from the model's record)."""
    if version is None:
        record = store.get_model(name)
        spec = ModelSpec(record.architecture, tuple(record.input_shape), list(record.classes), dict(record.options))
        return Loaded(None, spec, build_model(spec, seed=seed), {}, {})
    meta = store.get_version(name, version)
    spec = ModelSpec.from_json(meta.spec)
    model = build_model(spec)
    model.load_state_dict(st.loads(store.read_weights(name, version)))
    state = st.loads(store.read_state(name, version)) if meta.learner else {}
    return Loaded(version, spec, model, meta.learner, state)


def restore_learner(
    loaded: Loaded, method: str, settings: WorkerSettings, overrides: dict[str, Any]
) -> tuple[Learner, str | None]:
    """The parent's learner state under today's settings when the method is unchanged (so a changed λ or memory
    budget applies from this update on), else a fresh learner (carrying the exemplar memory over and measuring the
    new method's importance on it).  Returns the learner and a note when something was reset."""
    fresh = build_learner(method, settings, overrides)
    if (
        loaded.learner_hparams
        and loaded.learner_hparams.get("name") == fresh.name
        and loaded.learner_hparams.get("service_method") == method
    ):
        try:
            fresh.load_state_dict(loaded.learner_state)
        except ValueError:  # the settings changed the learner's parts (e.g. no companion MAS any more)
            fresh = stored_learner(loaded.learner_hparams)
            fresh.load_state_dict(loaded.learner_state)
        return fresh, None
    note = None
    if loaded.version is not None:
        fresh.experiences = 1  # the weights were trained before (an earlier method, or imported)
        previous = loaded.learner_hparams.get("service_method") or "imported weights"
        note = f"method changed from {previous!r} to {method!r}: importance restarts"
        old_memory = {k.removeprefix("memory."): v for k, v in loaded.learner_state.items() if k.startswith("memory.")}
        if fresh.memory is not None and old_memory:
            fresh.memory.load_state_dict(old_memory)
            for experience in fresh.memory.as_experiences():
                fresh.method.consolidate(loaded.model, experience)
            note += " (measured on the carried-over exemplar memory)"
    return fresh, note


class _Reporter:
    """Writes progress to the store at most every half second (and always when forced), while the lock holds."""

    def __init__(self, store: Store, record: UpdateRecord, lock: HeldLock) -> None:
        self.store, self.record, self.lock, self._last = store, record, lock, 0.0

    def __call__(self, fraction: float, force: bool = False) -> None:
        now = time.monotonic()
        if (force or now - self._last >= 0.5) and not self.lock.lost.is_set():
            lifecycle.progress(self.store, self.record, fraction)
            self._last = now


def run_update(
    store: Store,
    name: str,
    update_id: str,
    settings: WorkerSettings,
    *,
    preempted: Callable[[], bool] | None = None,
    where: str | None = None,
) -> UpdateRecord:
    """Run a queued update to its end and return its final record (status succeeded, rejected, failed, cancelled
    or skipped), holding the model's update lock throughout (``where`` names this process in the lock's owner).

    `StoreUnavailable` propagates without touching the record, so that the caller (a Celery task's retry) runs
    the update again once the store is back; the recovery sweep re-queues it if nobody does.

    The update stops between batches when it is cancelled (`Store.request_cancel`) or ``preempted()`` turns true
    (a shutdown): then nothing is committed, and a preempted update goes back to "queued" to run again.
    Raises `LockLost` (without touching the record) when another worker holds the model's lock, or when this
    run's lock expired under it (whoever holds it now owns the record)."""
    with update_lock(store, name, update_owner(update_id, where), settings.update_lock_ttl_s) as lock:
        record = store.get_update(name, update_id)
        if record.finished:
            return record  # idempotent: a redelivered task finds its work done
        if record.status == "running" and record.attempts >= settings.update_max_attempts:
            return lifecycle.fail(store, record, _gave_up(record))
        lifecycle.start(store, record)
        _trim_history(store, name, settings)
        stop = _Stopper(store, name, update_id, preempted, lock)
        try:
            outcome = _committed_earlier(store, name, record, settings)
            if outcome is None:
                outcome = _update(store, name, record, settings, lock.token, _Reporter(store, record, lock), stop)
        except (StoreUnavailable, LockLost):
            raise  # not the update's fault: the record stays "running" for a retry or the recovery sweep
        except UpdateCancelled:
            _still_held(lock)
            if stop.preempted:
                return lifecycle.requeue(store, record, "interrupted by a shutdown; it runs again from the start")
            return lifecycle.cancel(store, record, "cancelled before it finished; nothing was committed")
        except Exception as exc:  # the update fails; the live version keeps serving
            _still_held(lock, exc)
            log.exception("update %s of %s failed", update_id, name)
            return lifecycle.fail(store, record, f"{type(exc).__name__}: {exc}")
        _still_held(lock)
        return lifecycle.finish(store, record, outcome)


def _gave_up(record: UpdateRecord) -> str:
    return f"its worker died {record.attempts} times while running it; not retried"


def _still_held(lock: HeldLock, cause: BaseException | None = None) -> None:
    """Before writing how the run ended: a run whose lock expired (another holder may own the record now) writes
    nothing and raises `LockLost`."""
    if not lock.still_held():
        raise LockLost(
            f"the update lock of {lock.name!r} expired while the update ran; it did not record an end"
        ) from (cause)


def _committed_earlier(store: Store, name: str, record: UpdateRecord, settings: WorkerSettings) -> Outcome | None:
    """The end of an earlier attempt that committed its version but vanished before recording it (its worker
    died, or the store went away, between the commit and the update's record): finish from that version instead
    of training again, so an update makes at most one version."""
    if record.attempts <= 1:
        return None
    committed = [v for v in store.list_versions(name) if v.update_id == record.update_id]
    if not committed:
        return None
    version = committed[-1]
    metrics = dict(version.metrics)
    if version.status == "rejected":
        return Outcome("rejected", version.version, metrics, "rejected by the forgetting gate (an earlier attempt)")
    if not version.promotions:
        result = auto_promote(
            store, version, settings, by=f"auto-promote ({record.update_id})", expected=version.parent
        )
        if result is not None and not result.promoted:
            metrics["promotion"] = "not promoted: the live version changed while the update ran"
    return Outcome("succeeded", version.version, metrics)


class _Stopper:
    """Asked between batches whether to stop: a lost lock raises, a cancellation (read from the store at most
    twice a second) or a preemption stops."""

    def __init__(
        self,
        store: Store,
        name: str,
        update_id: str,
        preempted: Callable[[], bool] | None,
        lock: HeldLock,
    ) -> None:
        self.store, self.name, self.update_id = store, name, update_id
        self._preempted, self._lock = preempted, lock
        self._checked, self._cancelled = 0.0, False
        self.preempted = False

    def __call__(self) -> bool:
        self._lock.check()
        if self._preempted is not None and self._preempted():
            self.preempted = True
            return True
        now = time.monotonic()
        if not self._cancelled and now - self._checked >= 0.5:
            self._checked = now
            self._cancelled = self.store.cancel_requested(self.name, self.update_id)
        return self._cancelled


def _update(
    store: Store,
    name: str,
    record: UpdateRecord,
    settings: WorkerSettings,
    token: int,
    report: _Reporter,
    stop: Callable[[], bool],
) -> Outcome:
    model_record = store.get_model(name)
    parent = trusted_live_version(store, name, settings.signer())
    loaded = load_version(store, name, parent, seed=settings.seed)
    fixed, overrides = Fixed.split(model_record.method_hparams, record.hparams)
    learner, note = restore_learner(loaded, record.method, settings, overrides)
    if learner.stores_samples:
        learner.forget(store.deleted_ids(name))  # samples deleted since the parent was committed
    claimed = store.claim(name, limit=settings.max_samples_per_update)
    traffic = store.claim_captures(name)  # captured predictions: MAS importance only (`registry.captures`)
    if len(claimed.train) == 0 and len(traffic) == 0:  # another update consumed them: nothing is wrong
        return Outcome("skipped", note="nothing left to learn: no pending samples (another update consumed them)")
    spec, model = loaded.spec, loaded.model
    old_classes = list(spec.classes)
    history = history_of(store, name, parent, settings.report_window)  # one read: the parent's ledger
    evaluation = EvaluationData.gather(store, name, history.experiences, SampleSet.concat([], spec.input_shape))
    live = model if parent is not None else None
    trusted = evaluation.trusted(spec.input_shape)
    # the live model scores the trusted samples once: screening's thresholds and the gate's baseline read it
    live_logits = logits_of(live, trusted.inputs) if live is not None and len(trusted) else None
    prepared = prepare_claim(store, claimed, live, old_classes, trusted, record, settings, token, live_logits)
    claim = prepared.claim
    labeled, unlabeled = claim.train.labeled, claim.train.unlabeled
    if len(labeled) == 0 and len(unlabeled) == 0 and (prepared.quarantined or len(traffic) == 0):
        if prepared.quarantined:  # a claim of nothing but flips: no version, the quarantine holds them
            return Outcome("rejected", None, {"screening": prepared.screening.to_json()}, prepared.nothing_left())
        return Outcome("skipped", note=f"nothing left to learn: {prepared.nothing_left()}")
    unlabeled = SampleSet.concat([unlabeled, traffic.samples], spec.input_shape)
    report(0.05, force=True)
    evaluation.own = claim.held_out
    baseline = Baseline.measure(live, old_classes, evaluation, spec.input_shape, parent, live_logits)

    # new classes join the head in natural order (whatever order the samples came in)
    new_labels = natural_order({label for label in labeled.labels if label is not None and label not in spec.classes})
    new_classes = grow_classes(model, spec, new_labels, seed=settings.seed)
    config = settings.train_config(seed=settings.seed + history.depth)
    gamma = importance_s = training = None
    if len(labeled):
        targets = torch.tensor([spec.classes.index(label) for label in labeled.labels], dtype=torch.long)  # type: ignore[arg-type]
        ids = torch.tensor([int(i) for i in labeled.ids], dtype=torch.long) if labeled.ids else None
        experience = Experience(labeled.inputs, targets, None, tuple(new_classes), ids)
        fitted = fit_update(  # the training budget and the stability–plasticity choice (worker.selection)
            learner,
            model,
            experience,
            classes=list(spec.classes),
            old_outputs=len(old_classes),
            parent_version=parent,
            fixed=fixed,
            settings=settings,
            config=config,
            should_stop=stop,
            progress=lambda fraction: report(0.05 + 0.8 * fraction),
        )
        if fitted.cancelled or fitted.report is None:
            raise UpdateCancelled()
        learner, result, training = fitted.learner, fitted.report, fitted.record
        gamma, importance_s = result.gamma, result.importance_seconds
        note = "; ".join(n for n in (note, result.note) if n) or None
    if len(unlabeled):
        observed = learner.observe(model, unlabeled.inputs)
        importance_s = (importance_s or 0.0) + observed.seconds
    report(0.88, force=True)
    model.to("cpu")

    verdict = baseline.judge(model, spec.classes, settings.gate_rules())
    measured = version_metrics(
        model,
        spec.classes,
        evaluation,
        history,
        spec.input_shape,
        verdict,
        settings.report_window,
        predicted=baseline.candidate,
    )
    measured.screening = prepared.screening.to_json()
    metrics = measured.to_json()
    hparams = {**learner.hparams(), "service_method": record.method}
    version = VersionRecord(
        model=name,
        version=0,
        parent=parent,
        spec=spec.to_json(),
        learner=hparams,
        method=record.method,
        train_config={
            "epochs": config.epochs if training is None else training.epochs,
            "batch_size": config.batch_size,
            "lr": config.lr,
            "seed": config.seed,
            **({} if training is None else {"training": training.to_json()}),
        },
        samples={
            "labeled": len(labeled),
            "unlabeled": len(unlabeled),
            "captured": len(traffic),
            "held_out": len(claim.held_out),
            "new_classes": new_labels,
            "quarantined": len(prepared.quarantined),
            "deferred": len(prepared.deferred),
            "waiting_classes": [asdict(w) for w in prepared.waiting],
            "weight_align_gamma": gamma,
            "importance_s": importance_s,
            "note": note,
        },
        metrics=metrics,
        status="candidate" if verdict.passed else "rejected",
        update_id=record.update_id,
        triggered_by=record.triggered_by,
    )
    if stop():
        raise UpdateCancelled()
    if learner.stores_samples:
        learner.forget(store.deleted_ids(name))  # deleted while this update ran
    committed = store.commit_version(version, st.dumps(model.state_dict()), st.dumps(learner.state_dict()), fence=token)
    if claim.ids or prepared.quarantined or prepared.deferred:  # nothing posted was claimed: no experience
        store.ack(
            name,
            claim,
            committed.version,
            record.update_id,
            fence=token,
            quarantined=prepared.quarantined,
            deferred=prepared.deferred,
        )
    if len(traffic):
        store.ack_captures(name, traffic, fence=token)
    report(0.97, force=True)
    if training is not None:  # the update's record (and the worker's /metrics) carry the short form
        metrics = {**metrics, "training": training.summary()}
    if not verdict.passed:
        _prune(store, name, settings)
        return Outcome("rejected", committed.version, metrics, f"rejected by the forgetting gate: {verdict.describe()}")
    promoted = auto_promote(store, committed, settings, by=f"auto-promote ({record.update_id})", expected=parent)
    if promoted is not None and not promoted.promoted:
        metrics["promotion"] = "not promoted: the live version changed while the update ran"
    _prune(store, name, settings)
    return Outcome("succeeded", committed.version, metrics)


def _prune(store: Store, name: str, settings: WorkerSettings) -> None:
    """Version retention after a commit, under the update lock: housekeeping, whose failure must not fail an update
    that has committed."""
    try:
        prune_versions(store, name, settings.version_retention())
    except StoreUnavailable:
        log.warning("could not prune the versions of %s; the next update does", name)
    except Exception:
        log.exception("could not prune the versions of %s; the next update tries again", name)


def _trim_history(store: Store, name: str, settings: WorkerSettings) -> None:
    """Delete the records of finished updates beyond ``keep_finished_updates`` (housekeeping, as `_prune`)."""
    try:
        store.trim_updates(name, settings.keep_finished_updates)
    except StoreUnavailable:
        log.warning("could not trim the update history of %s; the next update does", name)
    except Exception:
        log.exception("could not trim the update history of %s; the next update tries again", name)


def import_weights(
    store: Store, name: str, weights: bytes, *, by: str | None, settings: WorkerSettings
) -> VersionRecord:
    """Commit pretrained weights (checked against the architecture) as a new version with no learner state, judged
    by the forgetting gate against the live version like any candidate (status "rejected" when it fails: then it
    is promoted only by force)."""
    busy = f"an update of {name!r} is running; import the weights when it has finished"
    with update_lock(store, name, task_owner("import"), settings.update_lock_ttl_s, busy=busy) as lock:
        parent = trusted_live_version(store, name, settings.signer())
        base = load_version(store, name, parent)
        try:
            state = st.loads(weights)
        except ValueError as exc:
            raise ValueError(f"the body is not a safetensors file: {exc}") from exc
        expected = base.model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(f"weights do not fit the architecture: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for key, value in state.items():
            if value.shape != expected[key].shape:
                raise ValueError(
                    f"weights do not fit: {key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}"
                )
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise ValueError(f"weights contain NaN or Inf in {key}")
        history = history_of(store, name, parent, settings.report_window)
        evaluation = EvaluationData.gather(
            store, name, history.experiences, SampleSet.concat([], base.spec.input_shape)
        )
        live = base.model if parent is not None else None
        baseline = Baseline.measure(live, base.spec.classes, evaluation, base.spec.input_shape, parent)
        base.model.load_state_dict(state)
        verdict = baseline.judge(base.model, base.spec.classes, settings.gate_rules())
        measured = version_metrics(
            base.model,
            base.spec.classes,
            evaluation,
            history,
            base.spec.input_shape,
            verdict,
            settings.report_window,
            predicted=baseline.candidate,
        )
        record = VersionRecord(
            model=name,
            version=0,
            parent=parent,
            spec=base.spec.to_json(),
            learner={},
            method="import",
            metrics=measured.to_json(),
            status="imported" if verdict.passed else "rejected",
            triggered_by=by,
        )
        return store.commit_version(record, st.dumps(base.model.state_dict()), st.dumps({}), fence=lock.token)
