"""Prometheus metrics (base units in names, bounded labels), a lightweight ASGI middleware that times requests and
enforces the body-size, media-type and encoding limits before any handler runs, and the access log's filter that
keeps query strings out of logs.

The API's metrics live here (requests, predictions, live versions, held-out accuracy, BWT, forgetting); the
updates' metrics (`worker.metrics`) are exported by whichever process runs updates.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, ClassVar
from urllib.parse import parse_qsl

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cl_core.validation import shown
from registry.signing import REASONS
from service.errors import BodyTooLarge
from service.media import ACCEPTED

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ApiMetrics:
    """What an API process measures."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "cl_http_requests_total",
            "HTTP requests by route template and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "cl_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.predictions = Counter(
            "cl_predictions_total", "inputs predicted, by model and version", ["model", "version"], registry=registry
        )
        self.batch_size = Histogram(
            "cl_predict_batch_inputs",
            "inputs per micro-batched forward pass",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=registry,
        )
        self.samples = Counter(
            "cl_samples_ingested_total",
            "accepted samples by kind (labeled, unlabeled, held_out)",
            ["model", "kind"],
            registry=registry,
        )
        self.samples_dropped = Counter(
            "cl_samples_dropped_total",
            "raw samples removed, by reason (retention, deleted)",
            ["model", "reason"],
            registry=registry,
        )
        self.live_version = Gauge("cl_model_live_version", "the version being served", ["model"], registry=registry)
        self.promotion_time = Gauge(
            "cl_model_live_since_timestamp_seconds", "when the served version went live", ["model"], registry=registry
        )
        self.accuracy = Gauge(
            "cl_model_heldout_accuracy_ratio",
            "live version's accuracy on all held-out data",
            ["model"],
            registry=registry,
        )
        self.class_accuracy = Gauge(
            "cl_model_heldout_class_accuracy_ratio",
            "live version's held-out accuracy per class",
            ["model", "class"],
            registry=registry,
        )
        self.acc = Gauge("cl_model_acc_ratio", "average accuracy over experiences (ACC)", ["model"], registry=registry)
        self.bwt = Gauge("cl_model_bwt_ratio", "backward transfer along the live lineage", ["model"], registry=registry)
        self.forgetting = Gauge(
            "cl_model_forgetting_ratio", "average forgetting along the live lineage", ["model"], registry=registry
        )
        self.queue_depth = Gauge("cl_update_queue_depth", "updates waiting to start", ["model"], registry=registry)
        self.stuck = Gauge(
            "cl_updates_stuck",
            "running updates whose lock no live worker holds (the recovery sweep re-queues them; set on scrape)",
            ["model"],
            registry=registry,
        )
        self.listener_errors = Counter(
            "cl_live_listener_errors_total",
            "errors of what reacts to a new live version after it went live (e.g. a reload out of memory)",
            ["model"],
            registry=registry,
        )
        self.serving = Gauge(
            "cl_model_serving",
            "1 while this process serves a live version of the model, 0 while the model has none (set on scrape)",
            ["model"],
            registry=registry,
        )

        self.promotions_rejected = Counter(
            "cl_promotion_rejected_total",
            "live pointers this replica read and refused to serve, by reason (unsigned, forged, replayed, digest)",
            ["model", "reason"],
            registry=registry,
        )

        # The children of the per-request series, by label values: ``labels()`` costs a few µs per call (locks,
        # tuples), several times per prediction.  Only series that are never removed are cached here.
        self._request_series: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._prediction_series: dict[tuple[str, int], Any] = {}

    def count_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """One answered request: ``cl_http_requests_total`` and ``cl_http_request_duration_seconds``."""
        key = (method, route, str(status))
        series = self._request_series.get(key)
        if series is None:
            series = self._request_series[key] = (self.requests.labels(*key), self.latency.labels(method, route))
        series[0].inc()
        series[1].observe(seconds)

    def count_predictions(self, model: str, version: int, inputs: int) -> None:
        """``inputs`` predicted by a version: ``cl_predictions_total``."""
        series = self._prediction_series.get((model, version))
        if series is None:
            series = self._prediction_series[(model, version)] = self.predictions.labels(model, str(version))
        series.inc(inputs)

    def track_model(self, model: str) -> None:
        """Start the model's refusal series at 0 (so that the first refusal is an increase Prometheus sees)."""
        for reason in REASONS:
            self.promotions_rejected.labels(model, reason)

    def observe_live(self, model: str, version: int | None, metrics: dict[str, Any], max_classes: int) -> None:
        """Export a newly served version's figures (and drop the previous per-class series)."""
        if version is None:
            self.forget_model(model)
            return
        self.live_version.labels(model).set(version)
        self.promotion_time.labels(model).set(time.time())
        for gauge, key in (
            (self.accuracy, "accuracy"),
            (self.acc, "acc"),
            (self.bwt, "bwt"),
            (self.forgetting, "forgetting"),
        ):
            value = metrics.get(key)
            gauge.labels(model).set(float("nan") if value is None else value)
        self._clear_classes(model)
        per_class = metrics.get("per_class_accuracy", {})
        if len(per_class) <= max_classes:
            for label, value in per_class.items():
                self.class_accuracy.labels(model, label).set(value)

    def _clear_classes(self, model: str) -> None:
        for labels in list(self.class_accuracy._metrics):
            if labels[0] == model:
                self.class_accuracy.remove(*labels)

    def forget_model(self, model: str) -> None:
        for gauge in (
            self.live_version,
            self.promotion_time,
            self.accuracy,
            self.acc,
            self.bwt,
            self.forgetting,
            self.queue_depth,
            self.stuck,
            self.serving,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(model)
        for reason in REASONS:
            with contextlib.suppress(KeyError):
                self.promotions_rejected.remove(model, reason)
        self._clear_classes(model)


KEY_PARAMETERS = frozenset({"api_key", "apikey", "api-key", "access_token"})
"""Query parameters that would carry an API key (compared in lower case): refused, keys belong in a header."""


def key_in_query(query_string: bytes) -> bool:
    """Whether the query string names a parameter that would carry an API key (any casing)."""
    if not query_string:
        return False
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    return any(key.strip().lower() in KEY_PARAMETERS for key, _ in pairs)


class RequestGuard:
    """Pure ASGI middleware: 400 for an API key in the URL, 413 for oversized bodies, 415 for wrong media types and
    compressed bodies, request metrics by route."""

    UPLOADS: ClassVar[dict[str, bytes]] = {"/weights": b"application/octet-stream", "/import": b"application/zip"}
    MEDIA: ClassVar[dict[str, tuple[bytes, ...]]] = {
        suffix: tuple(m.encode() for m in media) for suffix, media in ACCEPTED.items()
    }
    """Bodies other than JSON that a route takes, by the path's last segment (the routes' table: `service.media`)."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_upload_bytes: int, metrics: ApiMetrics | None) -> None:
        self.app, self.max_body, self.max_upload, self.metrics = app, max_body_bytes, max_upload_bytes, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status_holder = {"status": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
            await send(message)

        path = scope.get("path", "")
        upload = next((media for suffix, media in self.UPLOADS.items() if path.endswith(suffix)), None)
        limit = self.max_upload if upload is not None else self.max_body
        accepted = (upload,) if upload is not None else self.MEDIA.get(path[path.rfind("/") :], (b"application/json",))
        problem = self._check_headers(scope, limit, accepted)
        try:
            if problem is not None:
                await _reply(send_wrapper, *problem)
                return
            await self.app(scope, self._limited(receive, limit), send_wrapper)
        finally:
            if self.metrics is not None:
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                seconds = time.perf_counter() - start
                self.metrics.count_request(scope.get("method", ""), route, status_holder["status"], seconds)

    @staticmethod
    def _check_headers(scope: Scope, limit: int, accepted: tuple[bytes, ...]) -> tuple[int, str, str | None] | None:
        if key_in_query(scope.get("query_string", b"")):
            return (
                400,
                "API keys are not accepted in the URL (URLs end up in logs and browser histories): send the key in "
                "the 'Authorization: Bearer <key>' header, and replace a key that was sent in a URL",
                "api_key",
            )
        headers = dict(scope.get("headers", []))
        encodings = [e.strip().lower() for e in headers.get(b"content-encoding", b"").split(b",") if e.strip()]
        if any(e != b"identity" for e in encodings):
            return (
                415,
                "compressed request bodies are not supported: send the body uncompressed (no Content-Encoding, or "
                "Content-Encoding: identity)",
                "content-encoding",
            )
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return None
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return 413, f"the body is larger than the limit of {limit} bytes", None
        if length == b"0":
            return None
        media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if (length is not None or b"transfer-encoding" in headers) and media not in accepted:
            expected = " or ".join(m.decode() for m in accepted)
            got = shown(media.decode("latin-1"), 80) if media else "no content type"
            return 415, f"the body must be {expected}, got {got}", "content-type"
        return None

    @staticmethod
    def _limited(receive: Receive, limit: int) -> Receive:
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        return wrapped


async def _reply(send: Send, status: int, detail: str, field: str | None) -> None:
    body = json.dumps({"detail": detail, "field": field, "index": None}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class DropQueryString(logging.Filter):
    """Cuts the query string off the path in uvicorn's access log lines: a query string may hold a secret (an API
    key a client put in the URL, refused or not), and logs are read by more people than the API's callers.

    uvicorn logs ``'%s - "%s %s HTTP/%s" %d'`` with (client, method, path with query, HTTP version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (args[0], args[1], args[2].split("?", 1)[0], args[3], args[4])
        return True
