"""All of the service's settings in one place: ``CL_*`` environment variables (pydantic-settings).

The update, store and gate settings come from `worker.config.WorkerSettings`, which distributed workers read too.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from cl_core.drift import min_permutations
from worker.config import WorkerSettings

Scope = Literal["predict", "train", "admin"]
GC_YOUNG_THRESHOLD = 700
SCOPE_RANK: dict[str, int] = {"predict": 0, "train": 1, "admin": 2}


class Settings(WorkerSettings):
    """Service settings (``CL_`` prefix)."""

    model_config = SettingsConfigDict(env_prefix="CL_", extra="ignore", env_parse_none_str="none")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_keys: dict[str, Scope] = Field(
        default_factory=dict, description='JSON object key → scope ("predict" ⊂ "train" ⊂ "admin"); empty: no auth'
    )
    insecure: bool = Field(False, description="allow a non-loopback address without API keys")

    # limits
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_upload_bytes: int = Field(2 * 1024**3, ge=1024, description="weights and model archives")
    max_samples_per_request: int = Field(10_000, ge=1)
    max_inputs_per_predict: int = Field(1024, ge=1)
    max_image_pixels: int = Field(
        25_000_000,
        ge=1,
        description="most pixels (width × height) decoded per request, all its images together: the bomb limit",
    )

    # ingestion and the update policy
    holdout_fraction: float = Field(0.2, ge=0, lt=1, description="share of each labeled class kept for evaluation")
    max_classes: int = Field(1000, ge=1, le=100_000, description="classes a model may have (new ones beyond: 422)")
    max_new_classes_per_request: int = Field(100, ge=1, description="new class names one request may bring")
    policy_after_labeled: int = Field(0, ge=0, description="…or after this many new labeled samples (0: off)")
    policy_method: str = Field("auto", description="method of policy-triggered updates")
    update_workers: int = Field(1, ge=1, le=64, description="models updated in parallel (embedded executor)")

    # backpressure and quotas
    max_queued_updates: int = Field(8, ge=1, description="queued updates per model before 429")
    max_pending_samples: int = Field(200_000, ge=1, description="samples waiting for an update, per model, before 429")
    rate_limit_per_s: float = Field(0.0, ge=0, description="requests per second per API key (0: no limit)")
    rate_limit_burst: int = Field(100, ge=1, description="requests a key may make at once before the rate applies")

    # idempotency and retention
    idempotency_ttl_s: float = Field(24 * 3600, gt=0, description="how long an Idempotency-Key's answer is kept")
    retention_max_age_s: float | None = Field(None, gt=0, description="drop consumed raw samples older than this")
    retention_max_samples: int | None = Field(
        50_000,
        ge=0,
        description="keep at most this many consumed raw samples per model (None: all; pending and held-out data "
        "are never dropped)",
    )
    retention_interval_s: float = Field(300.0, gt=0, description="how often retention runs")
    shutdown_grace_s: float = Field(30.0, ge=0, description="how long SIGTERM waits for in-flight requests")

    # micro-batching of predictions
    max_batch_size: int = Field(64, ge=1)
    max_wait_ms: float = Field(2.0, ge=0, description="wait this long for more requests, only under load")
    predict_queue_limit: int = Field(4096, ge=1, description="queued predict inputs per model before 503")

    # garbage collection (`service.gc_tuning`)
    gc_freeze: bool = Field(
        True, description="clserve: freeze the start-up heap out of the cyclic collector's view (no long GC pauses)"
    )
    gc_young_threshold: int = Field(
        GC_YOUNG_THRESHOLD, ge=100, description="allocations between young-generation collections (CPython: 700)"
    )

    # captured prediction traffic (`service.capture`) and input drift (`service.drift`)
    capture_max_samples_limit: int = Field(
        100_000, ge=1, le=10_000_000, description="the largest capture.max_samples a model may ask for"
    )
    capture_queue_limit: int = Field(
        10_000, ge=1, description="captured inputs waiting to be stored, per process; beyond: dropped and counted"
    )
    capture_flush_ms: float = Field(1000.0, gt=0, le=60_000, description="how often captured inputs are stored")
    capture_id_block: int = Field(1024, ge=1, le=1_000_000, description="sample ids reserved at a time per model")
    drift_window: int = Field(200, ge=10, le=100_000, description="captured inputs per drift window")
    drift_every: int = Field(200, ge=1, description="test for drift after this many new captured inputs")
    drift_interval_s: float = Field(
        10.0, ge=0, le=86_400, description="…and at most this often per model (bounds the test's CPU under load)"
    )
    drift_reference: int = Field(500, ge=10, le=100_000, description="held-out inputs in the drift reference")
    drift_permutations: int = Field(200, ge=99, le=10_000, description="permutations of the drift test")
    drift_alpha: float = Field(0.01, gt=0, lt=1, description="false-positive rate of the drift test per window")
    drift_windows_kept: int = Field(20, ge=1, le=1000, description="latest drift windows GET …/drift shows")
    policy_drift_feedback: int = Field(
        0, ge=0, description="start an update when drift is detected and this many labeled samples wait (0: off)"
    )

    # metrics
    max_class_labels: int = Field(100, ge=0, description="per-class gauges only for models with at most this many")

    # hot reload
    reload_interval_s: float = Field(5.0, gt=0, description="re-read live pointers this often (missed messages)")

    # operator-registered architectures: {"name": "package.module:factory"}
    architectures: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _drift_test_can_detect(self) -> Settings:
        needed = min_permutations(self.drift_alpha)
        if self.drift_permutations < needed:
            raise ValueError(
                f"CL_DRIFT_PERMUTATIONS={self.drift_permutations} cannot reach p ≤ CL_DRIFT_ALPHA / 2: at least "
                f"{needed} for CL_DRIFT_ALPHA={self.drift_alpha}"
            )
        return self

    @field_validator("api_keys")
    @classmethod
    def _keys_are_long(cls, keys: dict[str, str]) -> dict[str, str]:
        for key in keys:
            if len(key) < 16:
                raise ValueError("API keys must be at least 16 characters")
        return keys

    def client_url(self, port: int | None = None) -> str:
        """The address a client on this machine uses to reach the service (``port``: the one actually bound, when
        CL_PORT is 0): a wildcard address (0.0.0.0, ::) is reached through loopback; IPv6 goes in brackets."""
        host = self.host
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            pass  # a name, such as localhost
        else:
            if address.is_unspecified:
                address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
            host = f"[{address}]" if address.version == 6 else str(address)
        return f"http://{host}:{self.port if port is None else port}"

    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
