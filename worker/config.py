"""Settings an update needs, read from ``CL_*`` environment variables (the service's settings extend these).

Distributed workers read the same variables as the API replicas, so one environment configures both.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Literal, Self

import torch
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cl_core.memory import DEFAULT_REPLAY_RATIO
from cl_core.trainer import TrainConfig
from registry.signing import MIN_KEY_CHARS, Signer
from worker.evaluation import GateRules
from worker.retention import VersionRetention
from worker.screening import ScreeningRules

log = logging.getLogger(__name__)

VISIBILITY_MARGIN_S = 600.0
"""How much longer than the longest allowed update an unacknowledged task stays invisible."""


class WorkerSettings(BaseSettings):
    """Store, training, method and gate settings."""

    model_config = SettingsConfigDict(env_prefix="CL_", extra="ignore", env_parse_none_str="none")

    # where things live
    data_dir: Path = Field(Path("./cl-data"), description="directory of the embedded store")
    redis_url: str | None = Field(None, description="redis://… selects the Redis store and Celery executor")
    device: str = Field("auto", description="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', …")
    torch_threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: torch's choice)")

    # training (the benchmark protocol's defaults)
    epochs: int = Field(10, ge=1, le=1000)
    batch_size: int = Field(128, ge=1, le=65536)
    lr: float = Field(1e-3, gt=0)
    seed: int = 0
    max_samples_per_update: int | None = Field(None, ge=1, description="train on at most this many pending samples")
    importance_max_samples: int | None = Field(2000, ge=1, description="samples used to estimate importance")

    # the training budget of every update (and a model's first version): early stopping on a validation slice of the
    # update's own data and the exemplar memory (never the gate's held-out data); see worker/selection.py
    train_budget: Literal["validation", "epochs"] = Field(
        "epochs", description="'validation': train until the validation slice stops improving; 'epochs': CL_EPOCHS"
    )
    budget_min_steps: int = Field(100, ge=0, le=1_000_000, description="optimiser steps before early stopping may stop")
    budget_max_steps: int = Field(2000, ge=1, le=1_000_000, description="optimiser steps at most")
    budget_patience: int = Field(5, ge=1, le=1000, description="evaluations without improvement before stopping")
    budget_eval_every: int = Field(20, ge=1, le=100_000, description="steps between two validation evaluations")
    validation_fraction: float = Field(
        0.1, gt=0, lt=1, description="share of each class of the update's data set aside to validate on"
    )

    # the stability–plasticity trade-off chosen per update (λ and the replay share) on a selection split
    selection: bool = Field(False, description="try several penalty strengths (and replay shares) per update")
    selection_memory_fraction: float = Field(
        0.25, gt=0, lt=1, description="share of each old class's exemplars set aside to measure forgetting on"
    )
    selection_max_candidates: int = Field(3, ge=1, le=16, description="candidates trained per update at most")
    selection_max_seconds: float = Field(600.0, gt=0, description="candidates stop training after this many seconds")
    selection_lambda_factors: list[float] = Field(
        default_factory=lambda: [0.1, 10.0, 100.0],
        max_length=8,
        description="λ candidates as factors of the configured λ: below 1 more plastic, above 1 more stable",
    )
    selection_replay_repeats: list[int] = Field(
        default_factory=lambda: [2], max_length=4, description="replay shares tried (exemplars replayed k times)"
    )

    # the `auto` method: online EWC on labeled data (+ replay, weight aligning), MAS on unlabeled data
    exemplar_memory: bool = Field(True, description="keep exemplars for replay (switch off for privacy)")
    memory_per_class: int | None = Field(
        200, ge=1, description="most exemplars one class keeps (its share of the total, if smaller, wins)"
    )
    memory_total: int | None = Field(
        10_000,
        ge=1,
        description="exemplars kept in all: shared equally by the classes seen, and within a class by the updates "
        "that brought it (benchmark protocol 2 uses a total of 200)",
    )
    replay: Literal["concat", "batch"] = Field(
        "concat",
        description="replay schedule: the memory concatenated to the update's data (the service's default), or a "
        "memory batch mixed into every step ('batch', the benchmark protocol's default)",
    )
    replay_ratio: float = Field(
        DEFAULT_REPLAY_RATIO, gt=0, le=16, description="replayed samples per new sample in each batch ('batch')"
    )
    auto_ewc_lambda: float = Field(100.0, ge=0)
    auto_ewc_gamma: float = Field(1.0, ge=0, le=1)
    auto_mas_lambda: float = Field(0.1, ge=0)
    max_penalty_terms: int | None = Field(
        3,
        ge=1,
        description="past penalties a method that keeps one per experience (R-EWC) keeps exactly; older ones are "
        "folded into the oldest kept (every update is an experience, so without a bound a version's state grows "
        "with the history: about 13 MB per term for the protocol MLP); none: every one exact",
    )
    mas_accumulate: Literal["sum", "mean"] = Field(
        "mean",
        description="how MAS (the auto method's companion, `mas`, `slnid`) joins each update's importance to the "
        "past: 'mean' (sample-weighted, the service's default: updates and captured traffic re-measure one deployed "
        "distribution, so a sum would grow the penalty with every update) or 'sum' (the paper's, per task)",
    )

    # the forgetting gate (judged on trusted held-out data: what versions that went live had held out)
    max_forgetting: float = Field(0.05, ge=0, le=1, description="largest allowed drop of old-class accuracy")
    max_class_drop: float = Field(
        0.10, ge=0, le=1, description="largest allowed drop of any one old class (its 95 % lower bound)"
    )
    min_class_samples: int = Field(30, ge=1, description="trusted held-out samples a class needs to be judged")
    heldout_per_class: int = Field(
        500,
        ge=1,
        le=1_000_000,
        description="held-out samples kept per class (a reservoir over every experience; raw-sample retention never "
        "drops them); at least CL_MIN_CLASS_SAMPLES",
    )
    auto_promote: bool = Field(True, description="promote candidates that pass the gate")

    # the forgetting report: each version keeps this many recent experiences' columns of the accuracy matrix
    report_window: int = Field(
        10, ge=1, le=100, description="experiences (columns) of the accuracy matrix the forgetting report shows"
    )

    # which claimed samples train: new classes wait until ready, systematic label flips go to quarantine
    policy_min_samples_per_new_class: int = Field(
        20, ge=1, description="a new class is learned (and the policy starts an update) once it has this many"
    )
    screening: bool = Field(True, description="screen labels for systematic flips before training")
    screening_min_share: float = Field(
        0.05, gt=0, le=1, description="a flip pair is systematic from this share of the samples of its given label"
    )
    screening_min_count: int = Field(10, ge=1, description="…and this many samples")

    # version retention (worker/retention.py): disk ≈ (keep_promoted + keep_candidates + pinned + 1) versions
    keep_promoted: int | None = Field(
        24,
        ge=0,
        description="the rollback window: keep the N versions most recently live (besides the live and the pinned "
        "ones); None (in code) keeps every version that was ever live",
    )
    keep_candidates: int | None = Field(
        10,
        ge=0,
        description="keep the newest M versions that were never live (rejected ones, imports, candidates waiting "
        "for a manual promotion); None (in code) keeps every one",
    )
    keep_versions: int | None = Field(
        None,
        ge=0,
        description="deprecated (CL_KEEP_VERSIONS): sets keep_promoted and keep_candidates to this where they are "
        "not set themselves",
    )
    keep_finished_updates: int = Field(
        1000, ge=1, le=1_000_000, description="keep the records of the newest N finished updates; older ones go"
    )

    # one update at a time per model
    update_lock_ttl_s: float = Field(120.0, gt=0, description="the lock expires unless refreshed this often")
    recovery_interval_s: float | None = Field(
        None,
        gt=0,
        le=86400,
        description="how often workers and replicas look for running updates nobody holds (default: half the lock "
        "TTL, so an update whose worker vanished runs again within about two lock lifetimes)",
    )

    # distributed mode: the Redis store and Celery workers (see docs/distributed.md)
    redis_chunk_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024, description="store values above this in chunks"
    )
    celery_broker_url: str | None = Field(None, description="Celery broker and result backend (default: redis_url)")
    celery_visibility_timeout_s: float | None = Field(
        None,
        gt=0,
        le=30 * 86400,
        description="an unacknowledged task returns to the queue after this (default: the hard time limit of an "
        "update plus 10 minutes, so a copy of a running task is not handed out while it may still run)",
    )
    celery_restore_interval_s: float = Field(
        10.0, gt=0, description="how often workers look for tasks whose worker vanished"
    )
    celery_soft_time_limit_s: float = Field(3 * 3600.0, gt=0, description="an update running longer fails")
    celery_time_limit_s: float = Field(3 * 3600.0 + 600, gt=0, description="…and its process is killed after this")
    celery_lock_retry_s: float = Field(5.0, gt=0, description="retry after this when the model's lock is held")
    update_max_attempts: int = Field(
        5, ge=1, description="an update whose worker process died this many times is failed, not run again"
    )
    worker_metrics_host: str = Field("127.0.0.1", description="address of a Celery worker's /metrics")
    worker_metrics_port: int = Field(9100, ge=0, le=65535, description="port of a Celery worker's /metrics (0: off)")

    # signed promotions (registry/signing.py): the key never goes to the store or a log
    signing_key: SecretStr | None = Field(
        None, description="HMAC key that signs promotions; replicas serve only signed ones (unset: unsigned)"
    )
    signing_keys_old: list[SecretStr] = Field(
        default_factory=list, description="JSON list of previous keys, accepted for verification only (rotation)"
    )

    @field_validator("signing_key", "signing_keys_old")
    @classmethod
    def _signing_keys_are_long(cls, value: SecretStr | list[SecretStr] | None) -> SecretStr | list[SecretStr] | None:
        for key in value if isinstance(value, list) else [value]:
            if key is not None and len(key.get_secret_value()) < MIN_KEY_CHARS:
                raise ValueError(f"a signing key must have at least {MIN_KEY_CHARS} characters")
        return value

    @field_validator("selection_lambda_factors")
    @classmethod
    def _factors_are_positive(cls, value: list[float]) -> list[float]:
        if any(not (math.isfinite(f) and 0 < f <= 1e6) for f in value):
            raise ValueError("λ factors must be finite numbers in (0, 1e6]")
        return value

    @field_validator("selection_replay_repeats")
    @classmethod
    def _repeats_are_small(cls, value: list[int]) -> list[int]:
        if any(not 1 <= k <= 16 for k in value):
            raise ValueError("replay repeats must be integers from 1 to 16")
        return value

    @model_validator(mode="after")
    def _budget_is_ordered(self) -> Self:
        if self.budget_min_steps > self.budget_max_steps:
            raise ValueError("CL_BUDGET_MIN_STEPS exceeds CL_BUDGET_MAX_STEPS")
        return self

    @model_validator(mode="after")
    def _held_out_store_holds_what_the_gate_needs(self) -> Self:
        if self.heldout_per_class < self.min_class_samples:
            raise ValueError(
                f"CL_HELDOUT_PER_CLASS ({self.heldout_per_class}) is below CL_MIN_CLASS_SAMPLES "
                f"({self.min_class_samples}): no class could ever be judged"
            )
        return self

    @model_validator(mode="after")
    def _old_keys_need_a_key(self) -> Self:
        if self.signing_keys_old and self.signing_key is None:
            raise ValueError("CL_SIGNING_KEYS_OLD is set without CL_SIGNING_KEY")
        return self

    @model_validator(mode="after")
    def _keep_versions_sets_both_windows(self) -> Self:
        if self.keep_versions is not None:
            log.warning(
                "CL_KEEP_VERSIONS is deprecated: it now sets CL_KEEP_PROMOTED and CL_KEEP_CANDIDATES where they are "
                "not set (promoted versions beyond the window are deleted too)"
            )
            if "keep_promoted" not in self.model_fields_set:
                self.keep_promoted = self.keep_versions
            if "keep_candidates" not in self.model_fields_set:
                self.keep_candidates = self.keep_versions
        return self

    def version_retention(self) -> VersionRetention:
        return VersionRetention(self.keep_promoted, self.keep_candidates)

    def signer(self) -> Signer | None:
        """The promotion signer of this deployment, or None when no key is set."""
        if self.signing_key is None:
            return None
        old = [k.get_secret_value() for k in self.signing_keys_old]
        return Signer(self.signing_key.get_secret_value(), old)

    @property
    def recovery_interval(self) -> float:
        """Seconds between two recovery sweeps."""
        return self.recovery_interval_s or self.update_lock_ttl_s / 2

    @property
    def visibility_timeout(self) -> float:
        """The broker's visibility timeout: the setting, else derived from the longest update the settings allow
        (``celery_time_limit_s``) plus a margin.  Recovering a vanished worker's update does not wait for it (the
        recovery sweep does that within about two lock lifetimes); it only bounds when a stale copy returns."""
        if self.celery_visibility_timeout_s is not None:
            return self.celery_visibility_timeout_s
        return max(self.celery_time_limit_s, self.celery_soft_time_limit_s) + VISIBILITY_MARGIN_S

    @property
    def broker_url(self) -> str | None:
        """Where Celery tasks travel (and results are kept): the broker setting, else the store's Redis."""
        return self.celery_broker_url or self.redis_url

    def apply_threads(self) -> None:
        """Pin torch's CPU threads (several processes on one machine should not oversubscribe it)."""
        if self.torch_threads is not None:
            torch.set_num_threads(self.torch_threads)

    def train_config(self, seed: int | None = None) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=self.seed if seed is None else seed,
            device=self.device,
        )

    def gate_rules(self) -> GateRules:
        return GateRules(self.max_forgetting, self.max_class_drop, self.min_class_samples)

    def screening_rules(self) -> ScreeningRules:
        return ScreeningRules(self.screening, self.screening_min_share, self.screening_min_count)

    @model_validator(mode="after")
    def _memory_has_a_budget(self) -> Self:
        if self.memory_per_class is None and self.memory_total is None:
            raise ValueError("CL_MEMORY_PER_CLASS and CL_MEMORY_TOTAL cannot both be unset: the memory needs a bound")
        return self

    def memory_hparams(self) -> dict[str, Any]:
        return {
            "per_class": self.memory_per_class,
            "total": self.memory_total,
            "replay": self.replay,
            "replay_ratio": self.replay_ratio,
        }

    def own_memory_size(self) -> int:
        """The sample budget of a method that keeps its own (DER++): the total, else 10 classes' worth."""
        if self.memory_total is not None:
            return self.memory_total
        assert self.memory_per_class is not None
        return 10 * self.memory_per_class
