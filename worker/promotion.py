"""Promotion, decided in one place: the pipeline's automatic promotion, an imported version's, and an operator's
promote or rollback all go through `promote` (compare-and-set of the live pointer, then the audit line).  A
version the forgetting gate rejected goes live only when forced (an admin's explicit choice), and the audit line
says so with what the gate found.

Once the pointer is written the promotion has happened: what reacts to it afterwards (a listener of the store, a
replica reloading the model, the audit line) can fail, e.g. a CUDA out-of-memory while loading the new version,
and that failure is logged and counted (`Store.listener_failed`), never turned into a failed update or request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from registry import UNSET, Store, VersionRecord
from registry.signing import Rejected, Signer, Verifier, weights_digest
from worker.audit import audit
from worker.config import WorkerSettings
from worker.evaluation import describe_gate


class RejectedByGate(Exception):
    """A promotion of a version the forgetting gate rejected, without force: nothing changed."""


class UntrustedParent(ValueError):
    """The live pointer an update would build on is not signed by the deployment's key (or its weights changed)."""


def trusted_live_version(store: Store, name: str, signer: Signer | None) -> int | None:
    """The live version an update or a weight import may build on.

    With a signing key, only a pointer whose promotion record is authentic, names this version and matches the
    stored weights: a replica refuses to serve a forged pointer, and an update must not launder one either (its
    parent would otherwise become the base of a new, correctly signed version).  A replay of an older genuine
    record is not detectable here (a worker keeps no memory of accepted sequence numbers); replicas catch it."""
    pointer = store.live_pointer(name)
    if signer is None or pointer.version is None:
        return pointer.version
    verifier = Verifier(signer)
    try:
        record = verifier.check(name, pointer.version, pointer.promotion)
        verifier.check_weights(record, weights_digest(store.read_weights(name, pointer.version)))
    except Rejected as exc:
        raise UntrustedParent(f"refusing to build on the live version of {name!r} ({exc.reason}): {exc}") from exc
    return pointer.version


@dataclass(frozen=True)
class PromotionResult:
    """What a promotion attempt did."""

    promoted: bool
    version: int
    previous: int | None  # the live version before (or, when not promoted, the one that stayed live)
    event: Literal["version.promoted", "version.rollback", "none"]
    forced: bool = False  # the version had been rejected by the forgetting gate
    gate: str | None = None  # what the gate found, for a forced promotion


def promote(
    store: Store,
    name: str,
    version: int,
    *,
    by: str | None,
    expected: int | None = UNSET,
    on_live: Callable[[str], None] | None = None,
    force: bool = False,
) -> PromotionResult:
    """Make ``version`` live if the live version is still ``expected`` (default: whatever it is now, read just
    before).  Then audit it and call ``on_live`` (e.g. this replica's reload); errors after the pointer was
    written are reported to the store's listener-error hooks, not raised.  A version the forgetting gate rejected
    raises `RejectedByGate` unless ``force``."""
    record = store.get_version(name, version)  # NotFound for a version that does not exist
    finding = describe_gate(record.metrics) if record.status == "rejected" else None
    if finding is not None and not force:
        raise RejectedByGate(
            f"version {version} was rejected by the forgetting gate ({finding}); "
            'promote it with {"force": true} if you mean it'
        )
    previous = store.live_version(name) if expected is UNSET else expected
    if not store.promote(name, version, by=by, expected=previous):
        return PromotionResult(False, version, store.live_version(name), "none")
    event: Literal["version.promoted", "version.rollback"] = (
        "version.rollback" if previous is not None and version < previous else "version.promoted"
    )
    forced = {"forced": True, "gate": finding} if finding is not None else {}
    try:
        audit(event, actor=by, model=name, version=version, previous=previous, **forced)
        if on_live is not None:
            on_live(name)
    except Exception as exc:  # the version is live: what failed reacting to it does not undo that
        store.listener_failed(name, exc)
    return PromotionResult(True, version, previous, event, finding is not None, finding)


def wants_promotion(version: VersionRecord, settings: WorkerSettings) -> bool:
    """The automatic decision: with ``CL_AUTO_PROMOTE`` on, a candidate that passed the forgetting gate and
    imported weights go live; a rejected candidate never does by itself."""
    return settings.auto_promote and version.status in ("candidate", "imported")


def auto_promote(
    store: Store,
    version: VersionRecord,
    settings: WorkerSettings,
    *,
    by: str | None,
    expected: int | None,
    on_live: Callable[[str], None] | None = None,
) -> PromotionResult | None:
    """Promote ``version`` if `wants_promotion` says so and the live version is still ``expected`` (the one it
    was trained from or imported over); None when the settings or the gate keep it from going live."""
    if not wants_promotion(version, settings):
        return None
    return promote(store, version.model, version.version, by=by, expected=expected, on_live=on_live)
