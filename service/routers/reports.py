"""/v1/models/{name}/metrics: the forgetting report of the live lineage."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from cl_core.labels import natural_order
from service import schemas
from service.deps import ModelName, PredictCaller, RuntimeDep
from worker.history import History, history_from

router = APIRouter(prefix="/v1/models", tags=["metrics"])

MAX_WINDOW = 100


@router.get(
    "/{name}/metrics",
    response_model=schemas.ForgettingReport,
    responses={404: {"model": schemas.ErrorBody}, 422: {"model": schemas.ErrorBody}},
)
def forgetting_report(
    name: ModelName,
    runtime: RuntimeDep,
    _: PredictCaller,
    window: Annotated[
        int | None,
        Query(
            ge=1,
            le=MAX_WINDOW,
            description="columns of the accuracy matrix to show (default CL_REPORT_WINDOW; at most what the live "
            "version kept)",
        ),
    ] = None,
    full: Annotated[
        bool, Query(description="add every experience's diagonal, best and last accuracy (one entry each)")
    ] = False,
) -> schemas.ForgettingReport:
    """Held-out accuracy per class, ACC, BWT and forgetting over the whole live lineage, the last columns of the
    accuracy matrix (rows: versions along the live lineage; columns: each update's new labeled data), and the live
    version's gate figures.  Reads the live version's record only (its ledger, `worker.history`): the size and the
    time do not grow with the history."""
    runtime.store.get_model(name)
    live = runtime.store.live_version(name)
    width = runtime.settings.report_window
    if live is None:
        record, history = None, History.empty()
    else:
        record = runtime.store.get_version(name, live)
        history = history_from(runtime.store, record, width)
    metrics = record.metrics if record is not None else {}
    summary = history.aggregates()
    shown = history.window.last(window or width)
    ledger = history.ledger
    per_class: dict[str, float] = metrics.get("per_class_accuracy", {})
    return schemas.ForgettingReport(
        model=name,
        live_version=live,
        held_out_samples=metrics.get("held_out_samples", 0),
        accuracy=metrics.get("accuracy"),
        per_class_accuracy={label: per_class[label] for label in natural_order(per_class)},
        acc=summary.acc,
        bwt=summary.bwt,
        forgetting=summary.forgetting,
        matrix=schemas.AccuracyMatrixBody(rows=shown.rows, columns=list(shown.columns), values=shown.values),
        experiences=len(ledger),
        window=len(shown.columns),
        carried_experiences=len(ledger.carried),
        history=history.source,
        ledger=schemas.ExperienceLedger(
            experiences=ledger.experiences,
            first=ledger.first,
            best=ledger.best,
            last=ledger.last,
            carried={str(k): v for k, v in ledger.carried.items()},
        )
        if full
        else None,
        gate=metrics.get("gate"),
        training=record.train_config.get("training") if record is not None else None,
    )
