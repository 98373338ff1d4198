"""A Python client of the service (what ``clctl`` is built on).  I/O goes through an injected `httpx.Client`."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import numpy as np

DEFAULT_URL = "http://127.0.0.1:8000"


class ServiceError(Exception):
    """A 4xx/5xx answer, with the service's detail, field and index."""

    def __init__(self, status: int, detail: str, field: str | None = None, index: int | None = None) -> None:
        where = f" (field {field}{'' if index is None else f', index {index}'})" if field else ""
        super().__init__(f"{status}: {detail}{where}")
        self.status, self.detail, self.field, self.index = status, detail, field, index


def _jsonable(inputs: Any) -> list[Any]:
    return np.asarray(inputs, dtype=np.float32).tolist() if not isinstance(inputs, list) else inputs


def npy_inputs(inputs: Any) -> bytes | None:
    """Inputs as an .npy file of float32, or None when they are no numeric array (ragged, strings, booleans): those
    go as JSON, so that the service names the bad item."""
    try:
        array = np.asarray(inputs)
    except ValueError:
        return None
    if array.dtype.kind not in "fiu":
        return None
    buffer = io.BytesIO()
    with np.errstate(over="ignore"):  # beyond float32: ±Inf, which the service refuses like the JSON number
        np.save(buffer, array.astype(np.float32), allow_pickle=False)
    return buffer.getvalue()


def npz_samples(inputs: Any, labels: Sequence[Any] | None) -> bytes | None:
    """Samples as the .npz file the service reads (``inputs``, and ``labels`` unless all are None; '' marks an
    unlabeled one), or None when they cannot be one (then they go as JSON)."""
    npy = npy_inputs(inputs)
    if npy is None:
        return None
    arrays = {"inputs": np.load(io.BytesIO(npy), allow_pickle=False)}
    if labels is not None and any(label is not None for label in labels):
        if any(isinstance(y, bool) or not isinstance(y, str | int | None) or y == "" for y in labels):
            return None  # not a label: the service's JSON answer says which
        if all(isinstance(y, int) and -(2**63) <= y < 2**63 for y in labels):
            arrays["labels"] = np.asarray(labels, dtype=np.int64)
        else:
            arrays["labels"] = np.asarray(["" if y is None else str(y) for y in labels], dtype=np.str_)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


class Client:
    """``Client(url, key)`` or ``Client(http=httpx.Client(...))`` (tests pass a transport).

    Inputs and samples travel as NumPy files (``application/x-npy``, ``application/x-npz``) unless ``binary`` is
    False or they are no numeric array; then as JSON."""

    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        *,
        http: httpx.Client | None = None,
        timeout: float = 60,
        binary: bool = True,
    ) -> None:
        self.binary = binary
        url = url or os.environ.get("CL_URL", DEFAULT_URL)
        key = key or os.environ.get("CL_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = http or httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"detail": response.text}
            raise ServiceError(response.status_code, body.get("detail", ""), body.get("field"), body.get("index"))
        return None if response.status_code == 204 else response.json()

    # -- models ----------------------------------------------------------------------------------------------------
    def create_model(self, name: str, architecture: str, input_shape: Sequence[int], **fields: Any) -> dict[str, Any]:
        return self._call(
            "POST",
            "/v1/models",
            json={"name": name, "architecture": architecture, "input_shape": list(input_shape), **fields},
        )

    def models(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/models")["models"]

    def model(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/models/{name}")

    def delete_model(self, name: str) -> None:
        self._call("DELETE", f"/v1/models/{name}")

    def set_capture(self, name: str, rate: float | None, max_samples: int = 10_000) -> dict[str, Any]:
        """Capture a share ``rate`` of the model's predicted inputs (None: capture off)."""
        capture = None if rate is None else {"rate": rate, "max_samples": max_samples}
        return self._call("PATCH", f"/v1/models/{name}", json={"capture": capture})

    def feedback(self, name: str, labels: dict[str, Any]) -> dict[str, Any]:
        """Label captured predictions: {id the prediction carried: label}."""
        items = [{"id": sample_id, "label": label} for sample_id, label in labels.items()]
        return self._call("POST", f"/v1/models/{name}/feedback", json={"items": items})

    def drift(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/models/{name}/drift")

    def import_weights(self, name: str, safetensors_bytes: bytes) -> dict[str, Any]:
        return self._call(
            "PUT",
            f"/v1/models/{name}/weights",
            content=safetensors_bytes,
            headers={"Content-Type": "application/octet-stream"},
        )

    # -- data ------------------------------------------------------------------------------------------------------
    def predict(self, name: str, inputs: Any, top_k: int | None = None) -> dict[str, Any]:
        params = {"top_k": top_k} if top_k else None
        path = f"/v1/models/{name}/predict"
        if self.binary and (npy := npy_inputs(inputs)) is not None:
            return self._call("POST", path, content=npy, headers={"Content-Type": "application/x-npy"}, params=params)
        return self._call("POST", path, json={"inputs": _jsonable(inputs)}, params=params)

    def post_samples(
        self,
        name: str,
        inputs: Any,
        labels: Sequence[Any] | None = None,
        *,
        defer_update: bool = False,
        relabel: bool = False,
    ) -> dict[str, Any]:
        """One durable batch (an .npz body by default, JSON otherwise); ``defer_update``: more of the same batch
        follows, so the update policy waits; ``relabel`` (admin): the labels redefine classes, exempt from label
        screening."""
        path = f"/v1/models/{name}/samples"
        params: dict[str, str] = {}
        if defer_update:
            params["defer_update"] = "true"
        if self.binary and not relabel and (npz := npz_samples(inputs, labels)) is not None:
            headers = {"Content-Type": "application/x-npz"}
            return self._call("POST", path, content=npz, headers=headers, params=params or None)
        rows = _jsonable(inputs)
        labels = list(labels) if labels is not None else [None] * len(rows)
        samples = [{"input": x, "label": y} for x, y in zip(rows, labels, strict=True)]
        body: dict[str, Any] = {"samples": samples, **({"relabel": True} if relabel else {})}
        return self._call("POST", path, json=body, params=params or None)

    def post_samples_chunked(
        self,
        name: str,
        inputs: Any,
        labels: Sequence[Any] | None = None,
        *,
        chunk: int = 500,
        on_chunk: Callable[[int], None] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Post in chunks (one durable batch each), yielding every answer.  Every chunk but the last defers the
        update policy, so the whole of ``inputs`` makes at most one update (the last answer's ``update_id``)."""
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1, got {chunk}")
        array = np.asarray(inputs, dtype=np.float32)
        for start in range(0, len(array), chunk):
            part = None if labels is None else list(labels[start : start + chunk])
            last = start + chunk >= len(array)
            answer = self.post_samples(name, array[start : start + chunk], part, defer_update=not last)
            if on_chunk is not None:
                on_chunk(len(array[start : start + chunk]))
            yield answer

    # -- updates and versions --------------------------------------------------------------------------------------
    def start_update(
        self, name: str, method: str | None = None, hparams: dict[str, float] | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"method": method} if method else {}
        if hparams:
            body["hparams"] = hparams
        return self._call("POST", f"/v1/models/{name}/updates", json=body)

    def update(self, name: str, update_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/models/{name}/updates/{update_id}")

    def updates(self, name: str) -> list[dict[str, Any]]:
        """Every stored update, oldest first (all pages followed; `updates_page` reads one)."""
        return self._all(f"/v1/models/{name}/updates", "updates")

    def updates_page(self, name: str, *, limit: int | None = None, cursor: str | None = None) -> dict[str, Any]:
        """One page, newest first: ``{"updates": [...], "next_cursor": str | None}``."""
        return self._page(f"/v1/models/{name}/updates", limit, cursor)

    def _page(self, path: str, limit: int | None, cursor: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if limit is not None:
            params["limit"] = limit
        if cursor is not None:
            params["cursor"] = cursor
        return self._call("GET", path, params=params or None)

    def _all(self, path: str, key: str, page_size: int = 500) -> list[dict[str, Any]]:
        """Every record of a paginated listing, oldest first (the pages come newest first)."""
        records: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = self._page(path, page_size, cursor)
            records += page[key]
            cursor = page.get("next_cursor")
            if cursor is None:
                return records[::-1]

    def cancel_update(self, name: str, update_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/models/{name}/updates/{update_id}")

    def wait_update(
        self,
        name: str,
        update_id: str,
        *,
        timeout: float = 600,
        poll: float = 0.25,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the update has finished (succeeded, failed, rejected, cancelled or skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.update(name, update_id)
            if on_progress is not None:
                on_progress(status)
            if status["status"] in ("succeeded", "failed", "rejected", "cancelled", "skipped"):
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"update {update_id} still {status['status']} after {timeout} s")
            time.sleep(poll)

    def versions(self, name: str) -> list[dict[str, Any]]:
        """Every stored version, oldest first (all pages followed; `versions_page` reads one)."""
        return self._all(f"/v1/models/{name}/versions", "versions")

    def versions_page(self, name: str, *, limit: int | None = None, cursor: str | None = None) -> dict[str, Any]:
        """One page, newest first: ``{"versions": [...], "next_cursor": str | None}``."""
        return self._page(f"/v1/models/{name}/versions", limit, cursor)

    def pin(self, name: str, version: int, *, pinned: bool = True) -> dict[str, Any]:
        """Pin (or, with ``pinned=False``, unpin) a version: version retention keeps a pinned one."""
        return self._call("POST" if pinned else "DELETE", f"/v1/models/{name}/versions/{version}/pin")

    def promote(self, name: str, version: int, *, force: bool = False) -> dict[str, Any]:
        body = {"force": True} if force else None
        return self._call("POST", f"/v1/models/{name}/versions/{version}/promote", json=body)

    def quarantine(self, name: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/v1/models/{name}/quarantine")["samples"]

    def release_quarantine(self, name: str, ids: Sequence[str]) -> dict[str, Any]:
        return self._call("POST", f"/v1/models/{name}/quarantine/release", json={"ids": list(ids)})

    def metrics(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/models/{name}/metrics")

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/healthz")

    def ready(self) -> dict[str, Any]:
        return self._call("GET", "/readyz")
