"""The production data loop's routes: feedback on captured predictions, and the input drift of the traffic.

A prediction that was captured carries an ``id``; ``POST …/feedback`` labels it (train scope): the captured input
becomes a labeled sample with that id, pending like a posted one (held out by the same policy, screened by the next
update, judged by the gate).  A prediction that was not captured is labeled by posting its input to ``…/samples``
with the label, as any sample.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, status
from starlette.concurrency import run_in_threadpool

from cl_core.labels import natural_order
from cl_core.validation import normalize_label
from registry.captures import CaptureConfig
from service import schemas
from service.deps import ModelName, PredictCaller, RuntimeDep, TrainCaller
from service.errors import ApiError
from service.policy_updates import known_classes, start_drift_update, start_policy_update
from service.routers.samples import check_class_growth
from service.runtime import Runtime
from worker.audit import audit

router = APIRouter(prefix="/v1/models", tags=["traffic"])

UNKNOWN = (
    "no captured input with this id is stored: never captured, evicted from the capture reservoir, deleted, or "
    "captured a moment ago at another replica (retry in a second)"
)
ANSWERED = "this capture was given feedback before; post the input to …/samples to label it again"


def checked_capture(setting: schemas.CaptureSetting | None, limit: int) -> CaptureConfig | None:
    """The capture setting as the store keeps it (422 beyond the operator's limit)."""
    if setting is None:
        return None
    if setting.max_samples > limit:
        raise ApiError(
            422,
            f"capture.max_samples is {setting.max_samples}; at most {limit} (CL_CAPTURE_MAX_SAMPLES_LIMIT)",
            field="capture.max_samples",
        )
    return CaptureConfig(float(setting.rate), setting.max_samples)


@router.post(
    "/{name}/feedback",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=schemas.FeedbackResponse,
    responses={404: {"model": schemas.ErrorBody}, 422: {"model": schemas.ErrorBody}, 429: {"model": schemas.ErrorBody}},
)
async def feedback(
    name: ModelName, body: schemas.FeedbackRequest, runtime: RuntimeDep, caller: TrainCaller
) -> schemas.FeedbackResponse:
    """Label captured predictions by the ids they carried: each becomes a labeled sample (screened and gated like
    any); an id no capture holds, or one labeled before, gets its own error and the others are accepted."""
    return await run_in_threadpool(_feedback, name, body, runtime, caller.name)


def _feedback(name: str, body: schemas.FeedbackRequest, runtime: Runtime, actor: str) -> schemas.FeedbackResponse:
    store, settings = runtime.store, runtime.settings
    if len(body.items) > settings.max_samples_per_request:
        raise ApiError(
            413, f"{len(body.items)} items; at most {settings.max_samples_per_request} per request", field="items"
        )
    seen: set[str] = set()
    labels: list[str] = []
    for index, item in enumerate(body.items):
        if item.id in seen:
            raise ApiError(422, f"items[{index}]: id {item.id} is given twice", field="items", index=index)
        seen.add(item.id)
        labels.append(normalize_label(item.label, index, field="items"))  # InvalidData: 422 naming the item
    record = store.get_model(name)
    before = store.pending_counts(name)
    if before.total + len(labels) > settings.max_pending_samples:
        raise ApiError(
            429,
            f"{before.total} samples of {name!r} are waiting for an update (limit {settings.max_pending_samples}); "
            "retry once an update has consumed them",
            headers={"Retry-After": "30"},
        )
    known = known_classes(runtime, record)
    check_class_growth(
        list(labels), known, before.per_class, settings.max_classes, settings.max_new_classes_per_request
    )
    runtime.capture.flush()  # ids this replica answered a moment ago are stored first
    items = [(item.id, label) for item, label in zip(body.items, labels, strict=True)]
    result = store.label_captures(name, items, settings.holdout_fraction)
    results = []
    for sample_id, label in items:
        outcome = result.status[sample_id]
        runtime.capture.metrics.feedback.labels(name, outcome).inc()
        if outcome == "accepted":
            results.append(
                schemas.FeedbackItemResult(
                    id=sample_id, status=outcome, label=label, held_out=result.held_out[sample_id]
                )
            )
        else:
            detail = UNKNOWN if outcome == "unknown" else ANSWERED
            results.append(schemas.FeedbackItemResult(id=sample_id, status=outcome, detail=detail))
    accepted = result.accepted
    new_classes = natural_order({result.labels[i] for i in accepted if result.labels[i] not in known})
    update_id = None
    if accepted:
        held = sum(result.held_out[i] for i in accepted)
        runtime.api_metrics.samples.labels(name, "labeled").inc(len(accepted) - held)
        runtime.api_metrics.samples.labels(name, "held_out").inc(held)
        audit(
            "feedback.accepted",
            actor=actor,
            model=name,
            accepted=len(accepted),
            refused=len(items) - len(accepted),
            held_out=held,
            new_classes=new_classes,
        )
        pending = store.pending_counts(name)
        update_id = start_policy_update(runtime, record, pending, known, actor) or start_drift_update(
            runtime, name, actor
        )
    return schemas.FeedbackResponse(
        accepted=len(accepted), results=results, new_classes=new_classes, update_id=update_id
    )


@router.get("/{name}/drift", response_model=schemas.DriftReport, responses={404: {"model": schemas.ErrorBody}})
def drift(name: ModelName, runtime: RuntimeDep, _: PredictCaller) -> schemas.DriftReport:
    """The input drift of the live version's captured traffic, as this replica sees it: the latest windows tested
    against the reference (held-out data of the live lineage, in the model's feature space)."""
    record = runtime.store.get_model(name)
    state = runtime.drift.state(name)
    capture = None if record.capture is None else schemas.CaptureSetting(**record.capture)
    shown_status: Literal["off", "collecting", "no reference", "monitoring"] = state.status
    detail = state.detail
    if capture is None and not state.windows:
        shown_status, detail = "off", "capture is off: PATCH the model with a capture setting to watch its traffic"
    return schemas.DriftReport(
        model=name,
        capture=capture,
        live_version=state.version,
        status=shown_status,
        detail=detail,
        reference_samples=state.reference_samples,
        window=runtime.settings.drift_window,
        window_inputs=state.window_inputs,
        alpha=runtime.settings.drift_alpha,
        windows=[schemas.DriftWindowInfo(**w.to_json()) for w in state.windows],
    )
