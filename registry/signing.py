"""Signed promotions: whoever can write to the store can move a live pointer, so a pointer is served only with a
promotion record signed by a holder of the deployment's key.

The record binds the model's name, the version, the SHA-256 of the version's stored weights (safetensors bytes) and
a per-model sequence number with an HMAC-SHA256 under ``CL_SIGNING_KEY``.  The key lives in the environment of the
processes that promote and serve, never in the store.  A store with a `Signer` signs every promotion and keeps the
record beside the pointer, in the same atomic change; a replica (`Verifier`) serves a pointer only if its record

* exists (else ``unsigned``),
* carries a valid MAC under the key or an old key still accepted (else ``forged``; a malformed record too),
* names this model and the pointer's version, with a sequence number above the last one this process accepted
  (else ``replayed``: an older record copied back, or a record moved to another version),
* and the weights it loads hash to the signed digest (else ``digest``).

Sequence numbers are ``max(previous + 1, microseconds since the epoch)``: strictly increasing in the store, and
still above what replicas accepted when the stored counter is lost or rolled back (a model deleted and created
again, Redis restored from an older backup).  A replica remembers the last sequence it accepted per model for its
lifetime; a freshly started replica accepts any correctly signed record whose weights match, i.e. at worst a
version that a key holder really promoted at some point.

Key rotation: sign with the new key (``CL_SIGNING_KEY``) and list the previous one in ``CL_SIGNING_KEYS_OLD``
(verification only) on every process, promote every model's live version again, then drop the old key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

log = logging.getLogger(__name__)

RECORD_FORMAT = 1
MIN_KEY_CHARS = 32
MAX_RECORD_CHARS = 4096  # a real record is about 300 characters plus the model's name (at most 64)
Reason = Literal["unsigned", "forged", "replayed", "digest"]
REASONS: tuple[Reason, ...] = ("unsigned", "forged", "replayed", "digest")


def weights_digest(weights: bytes) -> str:
    """The SHA-256 (hex) of a version's stored weights, as signed and as checked after loading."""
    return hashlib.sha256(weights).hexdigest()


def next_seq(previous: int | None) -> int:
    """The sequence number of the next promotion of a model whose last record had ``previous``."""
    return max((previous or 0) + 1, time.time_ns() // 1000)


@dataclass(frozen=True)
class PromotionRecord:
    """A signed promotion, stored beside the live pointer (JSON)."""

    model: str
    version: int
    weights_sha256: str
    seq: int
    mac: str

    def to_json(self) -> str:
        return json.dumps({"format": RECORD_FORMAT, **asdict(self)}, sort_keys=True)

    @classmethod
    def parse(cls, raw: str | bytes) -> PromotionRecord | None:
        """The record, or None when ``raw`` is not one (oversized, malformed JSON, missing fields, wrong types)."""
        if len(raw) > MAX_RECORD_CHARS:
            return None
        try:
            data: Any = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
            return None
        types = {"model": str, "version": int, "weights_sha256": str, "seq": int, "mac": str}
        for field, kind in types.items():
            value = data.get(field)
            if not isinstance(value, kind) or isinstance(value, bool):
                return None
        if len(data["mac"]) != 64 or len(data["weights_sha256"]) != 64:
            return None
        return cls(**{field: data[field] for field in types})


def _message(model: str, version: int, weights_sha256: str, seq: int) -> bytes:
    """What the MAC covers: a canonical JSON array, so no two different records share a message."""
    return json.dumps(["cl-promotion", RECORD_FORMAT, model, version, weights_sha256, seq]).encode()


class Signer:
    """Holds the signing key (and old keys accepted for verification only); never shows them."""

    def __init__(self, key: str, old_keys: Sequence[str] = ()) -> None:
        for k in (key, *old_keys):
            if len(k) < MIN_KEY_CHARS:
                raise ValueError(f"a signing key must have at least {MIN_KEY_CHARS} characters")
        self._key = key.encode()
        self._old = [k.encode() for k in old_keys]

    def __repr__(self) -> str:
        return f"Signer(old_keys={len(self._old)})"

    def sign(self, model: str, version: int, weights_sha256: str, seq: int) -> PromotionRecord:
        mac = hmac.new(self._key, _message(model, version, weights_sha256, seq), hashlib.sha256).hexdigest()
        return PromotionRecord(model, version, weights_sha256, seq, mac)

    def authentic(self, record: PromotionRecord) -> bool:
        """Whether the record's MAC is valid under the key or an old key (constant-time comparisons)."""
        message = _message(record.model, record.version, record.weights_sha256, record.seq)
        return any(
            hmac.compare_digest(hmac.new(key, message, hashlib.sha256).hexdigest(), record.mac)
            for key in (self._key, *self._old)
        )


class Rejected(Exception):
    """A live pointer a replica refuses to serve."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason: Reason = reason


class Verifier:
    """What a replica serves: only signed promotions, each newer than the last it accepted for the model."""

    def __init__(self, signer: Signer) -> None:
        self._signer = signer
        self._accepted: dict[str, int] = {}  # model → last accepted sequence number (this process's lifetime)

    def check(self, name: str, version: int, raw: str | bytes | None) -> PromotionRecord:
        """The record of the pointer ``name`` → ``version`` if it may be served (its weights still to be checked
        with `check_weights`); raises `Rejected`."""
        if raw is None:
            raise Rejected("unsigned", f"the live pointer of {name!r} (version {version}) has no promotion record")
        record = PromotionRecord.parse(raw)
        if record is None:
            raise Rejected("forged", f"the promotion record of {name!r} is malformed")
        if not self._signer.authentic(record):
            raise Rejected("forged", f"the promotion record of {name!r} (version {version}) has an invalid signature")
        if record.model != name or record.version != version:
            raise Rejected(
                "replayed",
                f"the live pointer of {name!r} says version {version} but its record was signed for "
                f"{record.model!r} version {record.version}",
            )
        last = self._accepted.get(name)
        if last is not None and record.seq <= last:
            raise Rejected(
                "replayed", f"the promotion record of {name!r} has sequence {record.seq}, not after {last} (a replay)"
            )
        return record

    @staticmethod
    def check_weights(record: PromotionRecord, weights_sha256: str) -> None:
        if not hmac.compare_digest(record.weights_sha256, weights_sha256):
            raise Rejected(
                "digest",
                f"the weights of {record.model!r} version {record.version} do not match the signed digest "
                f"(stored {weights_sha256[:12]}…, signed {record.weights_sha256[:12]}…)",
            )

    def accept(self, record: PromotionRecord) -> None:
        self._accepted[record.model] = max(record.seq, self._accepted.get(record.model, 0))


def sign_promotion(
    signer: Signer, name: str, version: int, weights: bytes, previous: str | bytes | None
) -> PromotionRecord:
    """The record of promoting ``version`` over the stored record ``previous`` (whose sequence number it follows
    only if it is authentic: a forged record cannot push the sequence anywhere)."""
    prior = PromotionRecord.parse(previous) if previous is not None else None
    seq = next_seq(prior.seq if prior is not None and signer.authentic(prior) else None)
    return signer.sign(name, version, weights_digest(weights), seq)
