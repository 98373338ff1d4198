"""/v1/models/{name}/metrics: the forgetting report of the live lineage."""

from __future__ import annotations

from fastapi import APIRouter

from cl_core.labels import natural_order
from service import schemas
from service.deps import ModelName, PredictCaller, RuntimeDep
from worker.evaluation import accuracy_matrix, lineage

router = APIRouter(prefix="/v1/models", tags=["metrics"])


@router.get("/{name}/metrics", response_model=schemas.ForgettingReport, responses={404: {"model": schemas.ErrorBody}})
def forgetting_report(name: ModelName, runtime: RuntimeDep, _: PredictCaller) -> schemas.ForgettingReport:
    """Held-out accuracy per class, the accuracy matrix (rows: versions along the live lineage; columns: each
    update's new labeled data), ACC, BWT and forgetting, and the live version's gate figures."""
    runtime.store.get_model(name)
    live = runtime.store.live_version(name)
    chain = lineage(runtime.store, name, live)
    matrix = accuracy_matrix(chain)
    metrics = chain[-1].metrics if chain else {}
    summary = matrix.summary()
    per_class: dict[str, float] = metrics.get("per_class_accuracy", {})
    return schemas.ForgettingReport(
        model=name,
        live_version=live,
        held_out_samples=metrics.get("held_out_samples", 0),
        accuracy=metrics.get("accuracy"),
        per_class_accuracy={label: per_class[label] for label in natural_order(per_class)},
        acc=summary["acc"],
        bwt=summary["bwt"],
        forgetting=summary["forgetting"],
        matrix=schemas.AccuracyMatrixBody(rows=matrix.rows, columns=matrix.columns, values=matrix.values),
        gate=metrics.get("gate"),
        training=chain[-1].train_config.get("training") if chain else None,
    )
