"""Tensors ↔ safetensors bytes, symmetric (like `safetensors.torch.save`/`load`, plus JSON metadata).

The only serialisation of tensors in the project: safe to read from untrusted bytes (no code runs on load).
"""

from __future__ import annotations

import json
import struct
from typing import Any

from safetensors.torch import load as _load
from safetensors.torch import save as _save
from torch import Tensor


def dumps(tensors: dict[str, Tensor], metadata: dict[str, Any] | None = None) -> bytes:
    """Serialise name→tensor (moved to CPU, made contiguous) with optional JSON metadata."""
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = None if metadata is None else {"json": json.dumps(metadata, separators=(",", ":"))}
    return _save(plain, metadata=meta)


def loads(data: bytes) -> dict[str, Tensor]:
    """Name→tensor from safetensors bytes (ValueError if they are not valid safetensors)."""
    try:
        return _load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"not a valid safetensors payload: {exc}") from exc


def metadata(data: bytes) -> dict[str, Any]:
    """The JSON metadata `dumps` stored (empty if none), read from the header alone."""
    if len(data) < 8:
        raise ValueError("not a valid safetensors payload: too short")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise ValueError("not a valid safetensors payload: header overruns the data")
    header = json.loads(data[8 : 8 + size])
    raw = header.get("__metadata__", {}).get("json")
    return json.loads(raw) if raw else {}
