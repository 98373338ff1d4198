"""Request and response bodies (the OpenAPI document at /docs is generated from these).

Field names that clients, docs and tests rely on are part of the public API: predict answers
``{"model", "version", "predictions": [{"label", "probability"}]}``; a model has ``live_version`` and ``classes``;
samples answer ``accepted`` and, when one was triggered, ``update_id``; an update's status has ``update_id``,
``status``, ``progress``, ``version``, ``error``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from typing_extensions import TypeAliasType

from registry.names import MODEL_NAME_PATTERN, SAMPLE_ID_PATTERN, check_sample_id

NAME_PATTERN = MODEL_NAME_PATTERN  # what a valid name is: `registry.names`, for the API and the stores alike

# A number or a nested list of numbers (one input, shaped like the model's input shape).  Strict: no strings or
# booleans; finite: NaN and ±Infinity (which JSON parsers let through) are rejected.
Tensorish = TypeAliasType("Tensorish", "StrictFloat | StrictInt | list[Tensorish]")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ErrorBody(BaseModel):
    detail: str
    field: str | None = None
    index: int | None = None


# -- models ------------------------------------------------------------------------------------------------------
class Preprocessing(Strict):
    """How an image becomes an input (checked further by `cl_core.preprocessing`): converted to ``mode``, resized
    to ``size``, pixel values 0-255 mapped linearly onto ``scale``, then (x − mean[c]) / std[c]; laid out channels
    first (C, H, W) and reshaped to the input shape, whose size must be C·H·W (e.g. "L" at 28×28 → [784])."""

    mode: Literal["L", "RGB"] = Field(description='"L": one grey channel; "RGB": three')
    size: list[StrictInt] = Field(min_length=2, max_length=2, description="[height, width], each 1-4096")
    scale: list[StrictFloat | StrictInt] = Field(
        default_factory=lambda: [0.0, 1.0], min_length=2, max_length=2, description="[low, high] for pixels 0 and 255"
    )
    mean: list[StrictFloat | StrictInt] = Field(
        default_factory=lambda: [0.0], min_length=1, max_length=3, description="one value, or one per channel"
    )
    std: list[StrictFloat | StrictInt] = Field(
        default_factory=lambda: [1.0], min_length=1, max_length=3, description="one value, or one per channel"
    )


class CaptureSetting(Strict):
    """Keep a sampled share of the predicted inputs as unlabeled samples (`registry.captures`): each input with
    probability ``rate``, in a reservoir of at most ``max_samples`` (at most CL_CAPTURE_MAX_SAMPLES_LIMIT)."""

    rate: StrictFloat | StrictInt = Field(ge=0, le=1, description="share of predicted inputs kept, 0 to 1")
    max_samples: StrictInt = Field(ge=1, description="captures kept at most (the reservoir's size)")


class ModelCreate(Strict):
    name: str = Field(pattern=NAME_PATTERN, description="becomes paths and keys: lowercase letters, digits, - and _")
    architecture: str = Field(max_length=64, description="a registered architecture: 'mlp', 'cnn' or an operator's own")
    input_shape: list[int] = Field(min_length=1, max_length=4, description="shape of one input, e.g. [784]")
    classes: list[StrictStr | StrictInt] = Field(
        default_factory=list, max_length=100_000, description="initial classes (at most CL_MAX_CLASSES)"
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="architecture options, e.g. {'hidden': [400, 400]}"
    )
    method: str = Field("auto", max_length=200, description="default update method: 'auto' or e.g. 'mas+replay+wa'")
    method_hparams: dict[str, Any] = Field(
        default_factory=dict, description="e.g. {'lam': 100, 'memory': {'per_class': 20}}"
    )
    preprocessing: Preprocessing | None = Field(
        None, description="accept PNG and JPEG inputs, preprocessed so; absent: the model takes no images"
    )
    capture: CaptureSetting | None = Field(None, description="capture prediction traffic; absent or null: off")


class ModelPatch(Strict):
    """What ``PATCH /v1/models/{name}`` changes: only the fields given."""

    capture: CaptureSetting | None = Field(
        None, description="the new capture setting; null switches capture off and empties the capture reservoir"
    )


class CaptureCounts(BaseModel):
    stored: int = Field(description="captured inputs in the reservoir (pending or kept for feedback)")
    pending: int = Field(description="captured inputs no update has observed yet (counted in pending.unlabeled)")


class PendingCounts(BaseModel):
    labeled: int = Field(description="labeled training samples waiting for the next update")
    unlabeled: int = Field(description="unlabeled samples waiting, captured predictions included (captured.pending)")
    held_out: int = Field(description="labeled samples kept for evaluation")
    per_class: dict[str, int] = Field(description="labeled samples per class, held-out ones included")


class WaitingClass(BaseModel):
    label: str
    samples: int = Field(description="samples of the class waiting (held-out ones included)")
    needed: int = Field(
        description="samples a new class needs before it is learned (CL_POLICY_MIN_SAMPLES_PER_NEW_CLASS)"
    )


class ModelInfo(BaseModel):
    name: str
    architecture: str
    input_shape: list[int]
    options: dict[str, Any]
    method: str
    method_hparams: dict[str, Any]
    preprocessing: Preprocessing | None = None
    classes: list[str]
    live_version: int | None
    versions: int = Field(description="versions stored now (version retention deletes old ones)")
    pending: PendingCounts
    pending_new_classes: list[str]
    waiting_classes: list[WaitingClass] = Field(
        description="new classes with too few samples: they wait while the ready classes are learned"
    )
    quarantined: int = Field(description="samples label screening set aside (GET …/quarantine)")
    state: Literal["no live version", "serving", "updating"]
    created_at: float
    capture: CaptureSetting | None = Field(None, description="the capture setting (null: off)")
    captured: CaptureCounts | None = Field(None, description="what the capture reservoir holds")


class ModelList(BaseModel):
    models: list[ModelInfo]


# -- predict -----------------------------------------------------------------------------------------------------
class PredictRequest(Strict):
    inputs: list[Tensorish] = Field(min_length=1, description="inputs, each nested like the model's input shape")


class LabelProbability(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    label: str
    probability: float
    top_k: list[LabelProbability] | None = None
    id: str | None = Field(
        None,
        description="the sample id of this input when it was captured (capture on, input sampled): feedback and "
        "samples/delete take it; absent: not captured",
    )


class PredictResponse(BaseModel):
    model: str
    version: int
    predictions: list[Prediction]


# -- samples -----------------------------------------------------------------------------------------------------
class Sample(Strict):
    input: Tensorish
    label: StrictStr | StrictInt | None = Field(None, description="absent or null: unlabeled; a number: its decimal")


class SamplesRequest(Strict):
    samples: list[Sample] = Field(min_length=1)
    relabel: StrictBool = Field(
        False, description="admin only: the labels redefine classes on purpose (exempt from label screening)"
    )


class SamplesResponse(BaseModel):
    accepted: int
    labeled: int
    unlabeled: int
    held_out: int
    new_classes: list[str]
    ids: list[str]
    update_id: str | None = None


SampleId = Annotated[
    StrictStr,
    AfterValidator(check_sample_id),
    Field(json_schema_extra={"pattern": SAMPLE_ID_PATTERN}, description="a decimal number from 1 to 2^63-1"),
]


class SamplesDelete(Strict):
    ids: list[SampleId] = Field(
        min_length=1, max_length=100_000, description="ids returned when the samples were posted"
    )


class SamplesDeleted(BaseModel):
    deleted: int = Field(description="stored samples found and removed")
    exemplars_removed: int = Field(description="copies removed from exemplar memories of stored versions")
    versions_scrubbed: int


# -- feedback on captured predictions -----------------------------------------------------------------------------
class FeedbackItem(Strict):
    id: SampleId = Field(description="the id a captured prediction carried")
    label: StrictStr | StrictInt = Field(description="the true label (a number: its decimal)")


class FeedbackRequest(Strict):
    items: list[FeedbackItem] = Field(min_length=1, max_length=100_000)


class FeedbackItemResult(BaseModel):
    id: str
    status: Literal["accepted", "unknown", "answered"] = Field(
        description="accepted: now a labeled sample; unknown: no captured input with this id is stored (never "
        "captured, evicted from the reservoir, deleted); answered: it was given feedback before"
    )
    label: str | None = None
    held_out: bool | None = Field(None, description="accepted and kept for evaluation, as any labeled sample")
    detail: str | None = None


class FeedbackResponse(BaseModel):
    accepted: int
    results: list[FeedbackItemResult] = Field(description="one per item, in order")
    new_classes: list[str]
    update_id: str | None = Field(None, description="the update the policy started, if any")


# -- input drift -------------------------------------------------------------------------------------------------
class DriftWindowInfo(BaseModel):
    at: float
    version: int
    inputs: int
    score: float = Field(description="MMD² over its permutation threshold (≥ 1: the features drifted)")
    detected: bool = Field(description="the features or the predicted-class mix failed the test")
    mmd2: float
    mmd_threshold: float
    mmd_p_value: float
    class_chi2: float
    class_threshold: float
    class_p_value: float
    class_shares: dict[str, float] = Field(description="predicted classes in the window")
    reference_shares: dict[str, float] = Field(description="predicted classes in the reference")


class DriftReport(BaseModel):
    model: str
    capture: CaptureSetting | None
    live_version: int | None
    status: Literal["off", "collecting", "no reference", "monitoring"]
    detail: str
    reference_samples: int = Field(description="held-out inputs of the live lineage in the reference")
    window: int = Field(description="captured inputs per window (CL_DRIFT_WINDOW)")
    window_inputs: int = Field(description="captured inputs in the current window")
    alpha: float = Field(description="false-positive rate per window (CL_DRIFT_ALPHA)")
    windows: list[DriftWindowInfo] = Field(description="the latest tested windows, newest first")


# -- quarantine --------------------------------------------------------------------------------------------------
class QuarantinedSample(BaseModel):
    id: str
    label: str | None = Field(description="the label it was posted with")
    predicted: str = Field(description="the class the live model and the trusted neighbours say it shows")
    held_out: bool
    update_id: str | None = Field(description="the update whose label screening set it aside")
    reason: str
    at: float


class QuarantineList(BaseModel):
    model: str
    samples: list[QuarantinedSample]


class QuarantineRelease(Strict):
    ids: list[str] = Field(min_length=1, max_length=100_000, description="ids of quarantined samples")


class QuarantineReleased(BaseModel):
    released: list[str] = Field(description="ids returned to the pending samples (exempt from screening)")
    update_id: str | None = Field(None, description="the update the policy started, if any")


# -- updates -----------------------------------------------------------------------------------------------------
class UpdateRequest(Strict):
    method: str | None = Field(
        None, max_length=200, description="'auto' or a method name such as 'mas+replay+wa'; default: the model's"
    )
    hparams: dict[str, StrictFloat | StrictInt] | None = Field(
        None,
        max_length=8,
        description="values this update uses instead of choosing them: 'lam' (the penalty strength, 0-1e12), "
        "'gamma' (online EWC, 0-1), 'replay_repeat' (exemplars replayed per epoch, 1-16); others are refused",
    )


class UpdateAccepted(BaseModel):
    update_id: str
    status: str


class UpdateStatus(BaseModel):
    update_id: str
    model: str
    method: str
    status: Literal["queued", "running", "succeeded", "failed", "rejected", "cancelled", "skipped"] = Field(
        description="queued → running → succeeded | rejected (the forgetting gate) | failed | cancelled | skipped "
        "(nothing was left to learn: another update consumed the samples)"
    )
    progress: float
    version: int | None
    error: str | None
    metrics: dict[str, Any]
    triggered_by: str | None
    reason: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    hparams: dict[str, float] = Field(default_factory=dict, description="values the request fixed (else chosen)")


class UpdateList(BaseModel):
    updates: list[UpdateStatus] = Field(description="newest first")
    next_cursor: str | None = Field(
        description="pass as ?cursor= for the next (older) page; null: this was the last page"
    )


# -- versions ----------------------------------------------------------------------------------------------------
class VersionInfo(BaseModel):
    version: int
    parent: int | None
    status: str
    live: bool
    method: str
    hyperparameters: dict[str, Any]
    train_config: dict[str, Any]
    classes: list[str]
    samples: dict[str, Any]
    metrics: dict[str, Any]
    update_id: str | None
    triggered_by: str | None
    promotions: list[dict[str, Any]]
    created_at: float
    pinned: bool = Field(False, description="an operator pinned it: version retention never deletes it")


class VersionList(BaseModel):
    versions: list[VersionInfo] = Field(description="newest first")
    next_cursor: str | None = Field(
        description="pass as ?cursor= for the next (older) page; null: this was the last page"
    )


class PromoteRequest(Strict):
    force: StrictBool = Field(False, description="promote a version the forgetting gate rejected (audited)")


class Promoted(BaseModel):
    model: str
    live_version: int
    previous: int | None
    forced: bool = Field(False, description="the version had been rejected by the gate and was promoted by force")
    gate: str | None = Field(None, description="what the gate had found (when forced)")


# -- forgetting report -------------------------------------------------------------------------------------------
class AccuracyMatrixBody(BaseModel):
    rows: list[int | None] = Field(
        description="versions along the live lineage: those that brought the columns shown, then the live version"
    )
    columns: list[int | None] = Field(
        description="the last experiences of the live lineage: the version whose update brought the data"
    )
    values: list[list[float | None]] = Field(
        description="lower-triangular: a row has the columns up to its own experience; the live version's row all"
    )


class ExperienceLedger(BaseModel):
    """What ACC, BWT and forgetting are computed from: per experience of the live lineage, oldest first."""

    experiences: list[int] = Field(description="the version whose update brought each experience's data")
    first: list[float | None] = Field(description="that version's accuracy on it (the diagonal R[j, j])")
    best: list[float | None] = Field(
        description="the best accuracy on it of the matrix rows before the live one (null: the live version's own)"
    )
    last: list[float | None] = Field(description="the live version's accuracy on it")
    carried: dict[str, int] = Field(
        description="experiences with no held-out samples left: the version that last measured them (`last` "
        "repeats that value)"
    )


class ForgettingReport(BaseModel):
    model: str
    live_version: int | None
    held_out_samples: int
    accuracy: float | None
    per_class_accuracy: dict[str, float]
    acc: float | None = Field(description="ACC over every experience of the live lineage (not only the window)")
    bwt: float | None = Field(description="BWT over every experience of the live lineage")
    forgetting: float | None = Field(description="average forgetting over every experience of the live lineage")
    matrix: AccuracyMatrixBody = Field(description="the accuracy matrix's last `window` columns and their rows")
    experiences: int = Field(0, description="experiences of the live lineage: the columns of the whole matrix")
    window: int = Field(0, description="columns shown in `matrix`")
    carried_experiences: int = Field(
        0, description="experiences with no held-out samples left: their accuracy is the last one measured"
    )
    history: Literal["ledger", "replay", "partial replay"] = Field(
        "ledger",
        description="ledger: read from the live version's record; replay: a version written before the ledger, "
        "replayed from its ancestors' rows; partial replay: one of those ancestors is gone (BWT and forgetting "
        "are null when a diagonal is unknown)",
    )
    ledger: ExperienceLedger | None = Field(None, description="every experience's figures (with ?full=true)")
    gate: dict[str, Any] | None
    training: dict[str, Any] | None = Field(
        None, description="how the live version trained: the budget, every candidate's figures, the choice, the cost"
    )
