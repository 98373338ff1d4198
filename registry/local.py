"""The embedded default store: a directory on local disk, for one process.

Layout (format 3, recorded in ``FORMAT``; a store of format 1 or 2 is migrated when opened)::

    models/<name>/model.json                    ModelRecord
    models/<name>/live.json                     {"version": int | null, "promotion": signed record JSON | null}
    models/<name>/versions/<v>/meta.json        VersionRecord        ┐ written in a temporary directory,
    models/<name>/versions/<v>/model.safetensors                     │ then renamed into place: a version is
    models/<name>/versions/<v>/state.safetensors                     ┘ visible only once complete
    models/<name>/versions/index.json           {"versions": [v, …]}: the stored numbers (counts and pages read
                                                this, not the directory; rewritten by every commit and deletion)
    models/<name>/samples/<seq>.safetensors     one ingestion batch: inputs, with labels, ids, held-out flags,
                                                arrival time and request key in its JSON metadata (once
                                                consumed, only the rows still pending or kept for retention)
    models/<name>/ingest.json                   next batch and sample numbers, labeled samples per class (the
                                                hold-out policy), the pending tally (the ledger)
    models/<name>/requests.log                  "<seq> <request key>" lines, appended (idempotent ingestion)
    models/<name>/experiences.jsonl             ExperienceRecord lines, appended: which batches each version
                                                consumed, and which of their samples it left out (deferred,
                                                quarantined); format 2 kept one JSON list, experiences.json
    models/<name>/heldout/index.json            the held-out store (registry.heldout): reservoir slots per
    models/<name>/heldout/<part>.safetensors    class, the parts and the rows each stores
    models/<name>/quarantine.json               id → QuarantineRecord JSON (+ "released"): samples set aside
    models/<name>/counters.json                 the last version number given
    models/<name>/deleted.json                  ids of samples deleted on request (tombstones)
    models/<name>/updates/<id>.json             UpdateRecord
    models/<name>/update-order/<seq>.<id>       empty: the order updates were created in (pages list the names)
    models/<name>/update-index.json             {"next": seq, "active": [id, …]}: queued and running updates
    models/<name>/answers/<digest>.json         idempotent answers with their expiry
    models/<name>/captures/index.json           the capture reservoir (registry.captures): positions, slots,
    models/<name>/captures/rows/<id>.safetensors  answered ids / one captured input each

Every file is written to a temporary name, fsynced and renamed, so a crash never leaves half a file; a crash
between the steps of a multi-file change leaves the store consistent (a version without experience record is a
candidate whose samples are still pending, and the next update trains on them again).

Samples left pending inside consumed batches (deferred by an update, or released from quarantine) are not kept in
a file of their own: they follow from experiences.jsonl (each experience lists the ids it deferred and the carried
ids it consumed) and quarantine.json, so every change of a sample's state is one atomic write.

Every path is built from a checked name or id (`registry.names`) and resolved: a path that leads outside the data
folder (a symbolic link, say) is refused, and a directory is removed recursively only when it is verifiably the
store's own (a real directory inside the folder holding the file the store wrote there).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from registry import tensors
from registry.base import UNSET, LiveListener, Store, Subscription
from registry.captures import (
    MAX_RESERVE,
    CaptureClaim,
    CaptureCounts,
    CaptureIndex,
    FeedbackResult,
    gather,
    row_bytes,
    row_tensor,
)
from registry.errors import Conflict, InvalidIdentifier, NotFound, QueueFull, StoreUnavailable
from registry.heldout import DEFAULT_CAPACITY, HeldOut, HeldOutIndex, Part, consolidate, empty, grouped, new_part
from registry.names import (
    check_model_name,
    check_page,
    check_request_key,
    check_sample_id,
    check_sample_ids,
    check_update_id,
    check_version,
    is_model_name,
    is_update_id,
    tombstones,
)
from registry.records import (
    ExperienceRecord,
    LivePointer,
    LockHolder,
    ModelRecord,
    Page,
    Promotion,
    QuarantineRecord,
    UpdateRecord,
    VersionCounts,
    VersionRecord,
)
from registry.samples import (
    BatchMeta,
    Claim,
    ClaimToken,
    PendingCounts,
    RetentionPass,
    SampleSet,
    SetAside,
    consumed_experience,
    consumed_held_out,
    experience_batches,
    experience_mask,
    experience_parts,
    holdout_flags,
    plan_claim,
    tally_pending,
)
from registry.signing import Signer, sign_promotion

log = logging.getLogger(__name__)

FORMAT_VERSION = 3


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _write_json(path: Path, value: Any, *, compact: bool = False) -> None:
    """Readable JSON; ``compact`` for files written on every update that grow to thousands of entries (json's C
    encoder serves only unindented output: the held-out index with its thousands of ids costs ≈ 10 ms indented)."""
    text = json.dumps(value, separators=(",", ":")) if compact else json.dumps(value, indent=1, sort_keys=True)
    write_atomic(path, text.encode())


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _experience_line(raw: dict[str, Any]) -> bytes:
    return json.dumps(raw, separators=(",", ":")).encode() + b"\n"


@dataclass
class _ExperienceLog:
    """experiences.jsonl parsed, with what claims derive from all of it, kept up to date record by record: the last
    consumed batch, the samples experiences deferred (carried) and the carried ones they consumed."""

    key: Any  # the file's identity (path and inode; a format-2 experiences.json: also size and time; None: no file)
    records: list[ExperienceRecord] = field(default_factory=list)
    upto: int = 0
    carried: dict[str, int] = field(default_factory=dict)
    consumed: set[str] = field(default_factory=set)
    size: int = 0  # bytes of complete lines read (a torn last line, left by a crash, is not a record)
    seen: int = 0  # the file's size when last read

    def add(self, record: ExperienceRecord) -> None:
        self.records.append(record)
        self.upto = max(self.upto, ClaimToken.from_json(record.claim).upto)
        self.carried.update({str(i): int(seq) for i, seq in dict(record.claim.get("deferred") or {}).items()})
        self.consumed.update(str(i) for i in dict(record.claim.get("consumed") or {}))

    def copy(self) -> _ExperienceLog:
        """A log to extend (this one is left as it was: a reader may hold it)."""
        return _ExperienceLog(
            self.key,
            list(self.records),
            self.upto,
            dict(self.carried),
            set(self.consumed),
            self.size,
            self.seen,
        )

    def read(self, data: bytes) -> None:
        """Add the complete lines of ``data`` (what follows ``size`` in the file)."""
        complete = data[: data.rfind(b"\n") + 1]
        for line in complete.splitlines():
            if line.strip():
                self.add(ExperienceRecord.from_json(json.loads(line)))
        self.size += len(complete)


@dataclass
class _Ledger:
    """ingest.json: the next batch and sample numbers, labeled samples per class so far (the hold-out policy) and
    the pending tally (None: stale, counted again before it is used)."""

    next_batch: int = 1
    next_sample: int = 1
    per_class: dict[str, int] = field(default_factory=dict)
    pending: PendingCounts | None = field(default_factory=PendingCounts)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Ledger:
        pending = data.get("pending")
        return cls(
            int(data["next_batch"]),
            int(data["next_sample"]),
            {str(c): int(n) for c, n in dict(data["per_class"]).items()},
            None if pending is None else PendingCounts.from_json(pending),
        )

    def to_json(self) -> dict[str, Any]:
        pending = None if self.pending is None else self.pending.to_json()
        return {
            "next_batch": self.next_batch,
            "next_sample": self.next_sample,
            "per_class": self.per_class,
            "pending": pending,
        }

    def add(self, meta: BatchMeta) -> None:
        """Account for a batch just stored (numbered ``next_batch``)."""
        self.next_batch = meta.seq + 1
        self.next_sample = max([self.next_sample, *(int(i) + 1 for i in meta.ids)])
        for label in meta.labels:
            if label is not None:
                self.per_class[label] = self.per_class.get(label, 0) + 1
        if self.pending is not None:
            self.pending = self.pending.plus(meta.labels, meta.held_out)


class _LocalSubscription(Subscription):
    def __init__(self, store: LocalStore, listener: LiveListener) -> None:
        self._store, self._listener = store, listener

    def close(self) -> None:
        self._store._listeners.discard(self._listener)


class LocalStore(Store):
    """A directory store for the embedded mode (one process; threads are serialised per model)."""

    def __init__(
        self, root: str | Path, *, signer: Signer | None = None, heldout_capacity: int = DEFAULT_CAPACITY
    ) -> None:
        if heldout_capacity < 1:
            raise ValueError(f"heldout_capacity must be at least 1, got {heldout_capacity}")
        self.root = Path(root)
        self._signer = signer
        self.heldout_capacity = heldout_capacity
        self.root.mkdir(parents=True, exist_ok=True)
        marker = self.root / "FORMAT"
        found = _read_json(marker).get("format") if marker.exists() else None
        if found not in (None, 1, 2, FORMAT_VERSION):
            raise StoreUnavailable(f"{self.root} holds store format {found}; this version reads {FORMAT_VERSION}")
        (self.root / "models").mkdir(exist_ok=True)
        self._real_root = self.root.resolve()
        self._locks: dict[str, threading.RLock] = {}
        self._experience_cache: dict[str, _ExperienceLog] = {}
        self._part_cache: dict[str, dict[str, tuple[Any, Part]]] = {}  # name → part → (file identity, part)
        self._index_cache: dict[str, tuple[Any, HeldOutIndex]] = {}  # name → (file identity, held-out index)
        self._locks_guard = threading.Lock()
        self._listeners: set[LiveListener] = set()
        self._update_locks: dict[str, tuple[int, float, str]] = {}  # name → (token, expires at, owner)
        self._fences: dict[str, int] = {}
        # name → (inode, bytes read, request key → batch seq) of requests.log
        self._request_index: dict[str, tuple[int, int, dict[str, int]]] = {}
        self._pruned: dict[str, float] = {}  # name → when expired answers were last removed
        self._indexed: set[str] = set()  # models whose version index this process checked against the directory
        if found == 1:
            self._migrate_from_1()
        if found in (1, 2):
            for model in self.list_models():  # format 3 appends experiences to a log instead of rewriting a list
                with self._lock(model.name):
                    self._convert_experiences(model.name)
        if found != FORMAT_VERSION:
            _write_json(marker, {"format": FORMAT_VERSION})

    # -- helpers --------------------------------------------------------------------------------------------------
    def _lock(self, name: str) -> threading.RLock:
        with self._locks_guard:
            return self._locks.setdefault(name, threading.RLock())

    def _inside(self, path: Path) -> Path:
        """``path`` when it resolves inside the data folder, else InvalidIdentifier."""
        if not path.resolve().is_relative_to(self._real_root):
            raise InvalidIdentifier(f"{path} resolves outside the store's data folder {self._real_root}")
        return path

    def _model_path(self, name: str) -> Path:
        """Where model ``name`` lives (it may not exist): a checked name, a real directory inside the folder."""
        path = self.root / "models" / check_model_name(name)
        if path.is_symlink():
            raise InvalidIdentifier(f"{path} is a symbolic link; the store keeps nothing outside its data folder")
        return self._inside(path)

    def _dir(self, name: str) -> Path:
        path = self._model_path(name)
        if not (path / "model.json").exists():
            raise NotFound(f"model {name!r} does not exist")
        return path

    def _version_dir(self, name: str, version: int, model_dir: Path | None = None) -> Path:
        """``model_dir``: ``self._dir(name)`` when the caller already has it (a page of versions checks the model's
        folder once, each version's folder on its own)."""
        base = self._dir(name) if model_dir is None else model_dir
        path = self._inside(base / "versions" / str(check_version(version, allow_zero=True)))
        if not (path / "meta.json").exists():
            raise NotFound(f"model {name!r} has no version {version}")
        return path

    def _update_path(self, name: str, update_id: str, suffix: str, model_dir: Path | None = None) -> Path:
        base = self._dir(name) if model_dir is None else model_dir  # as `_version_dir`
        return self._inside(base / "updates" / f"{check_update_id(update_id)}{suffix}")

    def _remove_own(self, path: Path, marker: str) -> None:
        """Remove a directory tree, only if it is verifiably the store's: a real directory inside the data folder
        holding ``marker`` (a file the store wrote there).  Anything else is left alone, with a warning."""
        if path.is_symlink() or not (path / marker).is_file() or not path.resolve().is_relative_to(self._real_root):
            log.warning("not removing %s: it is not verifiably this store's own", path)
            return
        shutil.rmtree(path, ignore_errors=True)

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def ping(self) -> None:
        if not (self.root / "models").is_dir() or not os.access(self.root, os.W_OK):
            raise StoreUnavailable(f"store directory {self.root} is not writable")

    # -- models ---------------------------------------------------------------------------------------------------
    def create_model(self, record: ModelRecord) -> None:
        path = self._model_path(record.name)
        with self._lock(record.name):
            if (path / "model.json").exists():
                raise Conflict(f"model {record.name!r} already exists")
            if path.exists():  # creating and deleting rename whole directories: this is not the store's
                try:
                    path.rmdir()  # an empty directory holds nobody's data
                except OSError:
                    raise Conflict(
                        f"{path} exists and is not a model of this store; move it away to create {record.name!r}"
                    ) from None
            staging = Path(tempfile.mkdtemp(dir=self.root / "models", prefix=f".create-{record.name}-"))
            _write_json(staging / "model.json", record.to_json())
            _write_json(staging / "live.json", {"version": None})
            os.rename(staging, path)
            _fsync_dir(path.parent)

    def get_model(self, name: str) -> ModelRecord:
        return ModelRecord.from_json(_read_json(self._dir(name) / "model.json"))

    def list_models(self) -> list[ModelRecord]:
        out = []
        for path in sorted((self.root / "models").iterdir()):
            valid = not path.name.startswith(".") and not path.is_symlink() and is_model_name(path.name)
            if valid and (path / "model.json").exists():
                out.append(ModelRecord.from_json(_read_json(path / "model.json")))
        return out

    def delete_model(self, name: str) -> None:
        with self._lock(name):
            path = self._dir(name)
            graveyard = self.root / "models" / f".deleted-{name}-{uuid.uuid4().hex}"
            os.rename(path, graveyard)  # atomic: the model vanishes at once
            self._remove_own(graveyard, "model.json")
            self._update_locks.pop(name, None)
            self._part_cache.pop(name, None)
            self._index_cache.pop(name, None)
        self._notify(name, None)

    def update_model(self, name: str, change: Callable[[ModelRecord], ModelRecord]) -> ModelRecord:
        with self._lock(name):
            record = change(self.get_model(name))
            if record.name != name:
                raise ValueError(f"a model's name cannot change ({name!r} → {record.name!r})")
            _write_json(self._dir(name) / "model.json", record.to_json())
            return record

    # -- versions -------------------------------------------------------------------------------------------------
    def _versions(self, name: str) -> list[int]:
        """The stored version numbers, ascending, from the directory itself (what the index is rebuilt from)."""
        vdir = self._dir(name) / "versions"
        if not vdir.exists():
            return []
        return sorted(int(p.name) for p in vdir.iterdir() if p.name.isdigit() and (p / "meta.json").exists())

    def _reindex_versions(self, name: str) -> list[int]:
        """Write versions/index.json from the directory (under the model's lock: after every commit and deletion,
        and once per process per model, which repairs an index a crash left behind a rename)."""
        numbers = self._versions(name)
        path = self._dir(name) / "versions" / "index.json"
        if not path.exists() or _read_json(path).get("versions") != numbers:
            _write_json(path, {"versions": numbers})
        self._indexed.add(name)
        return numbers

    def _version_index(self, name: str) -> list[int]:
        """The stored version numbers, ascending, read from the index (one small file, no listing)."""
        path = self._dir(name) / "versions" / "index.json"
        if name not in self._indexed:
            with self._lock(name):
                return self._reindex_versions(name)
        try:
            numbers: list[int] = _read_json(path)["versions"]
        except FileNotFoundError:  # the model was deleted (and maybe created again) since
            with self._lock(name):
                return self._reindex_versions(name)
        return numbers

    def _check_fence(self, name: str, fence: int | None) -> None:
        if fence is not None and fence != self._fences.get(name):
            raise Conflict(f"update lock of {name!r} was lost (fencing token {fence} is stale)")

    def commit_version(
        self,
        record: VersionRecord,
        weights: bytes,
        state: bytes,
        *,
        fence: int | None = None,
        number: int | None = None,
    ) -> VersionRecord:
        name = record.model
        if number is not None:
            check_version(number)
        with self._lock(name):
            self._check_fence(name, fence)
            vdir = self._dir(name) / "versions"
            vdir.mkdir(exist_ok=True)
            last = max([*self._versions(name), int(self._counters(name).get("last_version", 0))])
            if number is not None and number <= last:
                raise Conflict(f"version {number} of {name!r} is not after the newest ({last})")
            record.version = number if number is not None else last + 1
            staging = Path(tempfile.mkdtemp(dir=vdir, prefix=".commit-"))
            try:
                write_atomic(staging / "model.safetensors", weights)
                write_atomic(staging / "state.safetensors", state)
                _write_json(staging / "meta.json", record.to_json())
                os.rename(staging, vdir / str(record.version))
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            _fsync_dir(vdir)
            counters = self._counters(name)
            counters["last_version"] = record.version  # numbers are never reused, even after retention
            self._write_counters(name, counters)
            self._reindex_versions(name)
        return record

    def get_version(self, name: str, version: int) -> VersionRecord:
        return self._read_version(name, version)

    def _read_version(self, name: str, version: int, model_dir: Path | None = None) -> VersionRecord:
        return VersionRecord.from_json(_read_json(self._version_dir(name, version, model_dir) / "meta.json"))

    def list_versions(self, name: str) -> list[VersionRecord]:
        with self._lock(name):
            return [self.get_version(name, v) for v in self._versions(name)]

    def versions_page(self, name: str, *, limit: int, before: int | None = None) -> Page[VersionRecord]:
        limit, before = check_page(limit, before)
        numbers = self._version_index(name)
        below = numbers[: bisect.bisect_left(numbers, before)] if before is not None else numbers
        chosen = below[::-1][:limit]
        records = []
        model_dir = self._dir(name)
        for v in chosen:
            try:
                records.append(self._read_version(name, v, model_dir))
            except NotFound:  # deleted since the index was read
                continue
        more = len(below) > len(chosen)
        return Page(records, chosen[-1] if more else None)

    def version_counts(self, name: str) -> VersionCounts:
        numbers = self._version_index(name)
        return VersionCounts(len(numbers), numbers[-1] if numbers else None)

    def read_weights(self, name: str, version: int) -> bytes:
        return (self._version_dir(name, version) / "model.safetensors").read_bytes()

    def read_state(self, name: str, version: int) -> bytes:
        return (self._version_dir(name, version) / "state.safetensors").read_bytes()

    def rewrite_state(self, name: str, version: int, state: bytes) -> None:
        with self._lock(name):
            write_atomic(self._version_dir(name, version) / "state.safetensors", state)

    def _remove_version(self, name: str, path: Path, version: int) -> None:
        graveyard = path.parent / f".deleted-{version}-{uuid.uuid4().hex}"
        os.rename(path, graveyard)  # atomic: the version vanishes at once, then its files go
        self._reindex_versions(name)
        self._remove_own(graveyard, "meta.json")

    def delete_version(self, name: str, version: int) -> None:
        with self._lock(name):
            path = self._version_dir(name, version)
            if self.live_version(name) == version:
                raise Conflict(f"version {version} of {name!r} is live; promote another one first")
            self._remove_version(name, path, version)

    def pin_version(self, name: str, version: int, pinned: bool) -> VersionRecord:
        with self._lock(name):  # the lock `prune_version` holds: a pin lands before its check or finds it gone
            meta_path = self._version_dir(name, version) / "meta.json"
            meta = _read_json(meta_path)
            if bool(meta.get("pinned")) != pinned:
                meta["pinned"] = pinned
                _write_json(meta_path, meta)
            return VersionRecord.from_json(meta)

    def prune_version(self, name: str, version: int, *, promotions: int) -> bool:
        with self._lock(name):
            try:
                path = self._version_dir(name, version)
            except NotFound:
                return False
            meta = _read_json(path / "meta.json")
            promoted_since = len(meta.get("promotions") or []) > promotions
            if meta.get("pinned") or promoted_since or self.live_version(name) == version:
                return False
            self._remove_version(name, path, version)
            return True

    # -- live pointer ---------------------------------------------------------------------------------------------
    def live_version(self, name: str) -> int | None:
        return self.live_pointer(name).version

    def live_pointer(self, name: str) -> LivePointer:
        live = _read_json(self._dir(name) / "live.json")
        value, record = live.get("version"), live.get("promotion")
        if record is not None and not isinstance(record, str):
            record = json.dumps(record)  # not what promote writes: the verifier sees it as it is
        return LivePointer(None if value is None else int(value), record)

    def promote(self, name: str, version: int, *, by: str | None, expected: int | None = UNSET) -> bool:
        with self._lock(name):
            pointer = self.live_pointer(name)
            current = pointer.version
            if expected is not UNSET and current != expected:
                return False
            vdir = self._version_dir(name, version)
            record = None
            if self._signer is not None:
                weights = (vdir / "model.safetensors").read_bytes()
                record = sign_promotion(self._signer, name, version, weights, pointer.promotion).to_json()
            meta_path = vdir / "meta.json"
            meta = _read_json(meta_path)
            meta.setdefault("promotions", []).append(Promotion(by, time.time(), current).to_json())
            _write_json(meta_path, meta)
            _write_json(self._dir(name) / "live.json", {"version": version, "promotion": record})
        self._notify(name, version)  # after the pointer is written: a listener's error cannot undo or fail it
        return True

    def subscribe(self, listener: LiveListener) -> Subscription:
        self._listeners.add(listener)
        return _LocalSubscription(self, listener)

    def _notify(self, name: str, version: int | None) -> None:
        self.deliver(list(self._listeners), name, version)

    # -- samples --------------------------------------------------------------------------------------------------
    # Ingestion never lists the batches: the ledger (ingest.json) holds the next numbers, the hold-out counters and
    # the pending tally; requests.log maps request keys to batches.  A batch file is written first and is the
    # commit point: a batch numbered at the ledger's next number means a crash came before the ledger was written,
    # and it is rolled forward (one file-existence check per call).  An operation that changes what is pending other
    # than by appending (ack, quarantine, release, deletion) marks the tally stale before it starts and counts it
    # again when it is done, so a crash in between leaves a tally that is counted again, never a wrong one.
    def _batches(self, name: str) -> list[Path]:
        """Every stored batch (a directory listing: only whole-store passes use it: retention, deletion, migration)."""
        sdir = self._dir(name) / "samples"
        return sorted(sdir.glob("*.safetensors")) if sdir.exists() else []

    @staticmethod
    def _seq(path: Path) -> int:
        return int(path.name.split(".")[0])

    def _counters(self, name: str) -> dict[str, Any]:
        path = self._dir(name) / "counters.json"
        counters: dict[str, Any] = _read_json(path) if path.exists() else {}
        counters.setdefault("per_class", {})
        counters.setdefault("next_sample", 1)
        counters.setdefault("next_batch", 1)
        return counters

    def _write_counters(self, name: str, counters: dict[str, Any]) -> None:
        _write_json(self._dir(name) / "counters.json", counters)

    def _batch_path(self, name: str, seq: int) -> Path:
        return self._dir(name) / "samples" / f"{seq:012d}.safetensors"

    def _write_ledger(self, name: str, ledger: _Ledger) -> None:
        _write_json(self._dir(name) / "ingest.json", ledger.to_json())

    def _ledger(self, name: str) -> _Ledger:
        """The ledger, rolled forward over batches written after it and with its pending tally counted."""
        path = self._dir(name) / "ingest.json"
        ledger = _Ledger.from_json(_read_json(path)) if path.exists() else _Ledger()
        changed = False
        while (batch := self._batch_path(name, ledger.next_batch)).exists():
            meta = self._read_meta(batch)
            if meta.request_key:
                self._log_request(name, meta.request_key, meta.seq)
            ledger.add(meta)
            changed = True
        if ledger.pending is None:
            ledger.pending = self._count_pending(name, ledger.next_batch)
            changed = True
        if changed:
            self._write_ledger(name, ledger)
        return ledger

    def _mark_stale(self, name: str) -> None:
        """Mark the pending tally stale before changing what is pending (see the section's comment)."""
        ledger = self._ledger(name)
        ledger.pending = None
        self._write_ledger(name, ledger)

    def _count_pending(self, name: str, next_batch: int) -> PendingCounts:
        aside = self._set_aside(name)
        unconsumed = self._pending_metas(name, self._consumed_upto(name), next_batch)
        return tally_pending(aside.pending(self._metas(name, aside.carried_batches), unconsumed))

    def _requests(self, name: str) -> dict[str, int]:
        """Request key → batch, from requests.log: read once per process, then only what other writers appended."""
        path = self._dir(name) / "requests.log"
        try:
            stat = path.stat()
        except FileNotFoundError:
            return {}
        inode, offset, index = self._request_index.get(name, (-1, 0, {}))
        if inode != stat.st_ino or stat.st_size < offset:  # rewritten (compacted) or a new model of that name
            offset, index = 0, {}
        if stat.st_size > offset:
            with path.open("rb") as f:
                f.seek(offset)
                tail = f.read()
            complete = tail[: tail.rfind(b"\n") + 1]  # a torn last line (a crash) is not a key yet
            for line in complete.decode(errors="replace").splitlines():
                seq, _, key = line.partition(" ")
                if seq.isdigit() and key:
                    index[key] = int(seq)
            offset += len(complete)
        self._request_index[name] = (stat.st_ino, offset, index)
        return index

    def _log_request(self, name: str, key: str, seq: int) -> None:
        path = self._dir(name) / "requests.log"
        created = not path.exists()
        with path.open("a+b") as f:
            end = f.seek(0, os.SEEK_END)
            torn = False
            if end:
                f.seek(end - 1)
                torn = f.read(1) != b"\n"
            f.write((b"\n" if torn else b"") + f"{seq} {key}\n".encode())
            f.flush()
            os.fsync(f.fileno())
        if created:
            _fsync_dir(path.parent)

    def _compact_requests(self, name: str) -> None:
        """Rewrite requests.log with the keys whose batch is still stored (retention and deletion drop batches)."""
        path = self._dir(name) / "requests.log"
        if not path.exists():
            return
        index = self._requests(name)
        alive = {k: seq for k, seq in index.items() if self._batch_path(name, seq).exists()}
        if len(alive) < len(index):
            write_atomic(path, "".join(f"{seq} {key}\n" for key, seq in alive.items()).encode())

    def append_samples(
        self,
        name: str,
        inputs: Tensor,
        labels: Sequence[str | None],
        holdout_fraction: float,
        *,
        request_key: str | None = None,
        relabel: bool = False,
    ) -> tuple[list[str], list[bool]]:
        if request_key is not None:
            check_request_key(request_key)
        with self._lock(name):
            ledger = self._ledger(name)
            if request_key is not None:
                seq = self._requests(name).get(request_key)
                if seq is not None and (path := self._batch_path(name, seq)).exists():
                    first_answer = self._read_meta(path)
                    return list(first_answer.original_ids or []), list(first_answer.original_held_out or [])
            return self._store_batch(name, ledger, inputs, labels, holdout_fraction, request_key, relabel)

    def _store_batch(
        self,
        name: str,
        ledger: _Ledger,
        inputs: Tensor,
        labels: Sequence[str | None],
        holdout_fraction: float,
        request_key: str | None = None,
        relabel: bool = False,
        ids: Sequence[str] | None = None,
    ) -> tuple[list[str], list[bool]]:
        """Write the next batch (under the model's lock) with new ids, or with ``ids`` already taken (feedback on
        captures keeps the capture's id), and account for it in the ledger."""
        held = holdout_flags(labels, dict(ledger.per_class), holdout_fraction)
        seq, first = ledger.next_batch, ledger.next_sample
        ids = [str(first + i) for i in range(len(labels))] if ids is None else list(ids)
        meta = BatchMeta(
            seq,
            list(labels),
            held,
            ids,
            at=time.time(),
            request_key=request_key,
            original_ids=ids if request_key is not None else None,  # the answer to repeat on a retry
            original_held_out=held if request_key is not None else None,
            relabel=relabel,
        )
        write_atomic(self._batch_path(name, seq), tensors.dumps({"inputs": inputs}, meta.to_json()))
        if request_key is not None:
            self._log_request(name, request_key, seq)
        ledger.add(meta)
        self._write_ledger(name, ledger)
        return ids, held

    def _read_meta(self, path: Path) -> BatchMeta:
        """A batch's metadata, read from the file's header alone (not its tensors)."""
        with path.open("rb") as f:
            head = f.read(8)
            size = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            return BatchMeta.from_json(self._seq(path), tensors.metadata(head + f.read(size)))

    def _pending_metas(self, name: str, after: int, before: int) -> list[BatchMeta]:
        """The metadata of the stored batches numbered above ``after`` and below ``before`` (the pending ones, when
        ``before`` is the ledger's next number), in arrival order."""
        paths = (self._batch_path(name, seq) for seq in range(after + 1, before))
        return [self._read_meta(path) for path in paths if path.exists()]

    def _read_batch(self, path: Path) -> tuple[SampleSet, BatchMeta]:
        data = path.read_bytes()
        meta = BatchMeta.from_json(self._seq(path), tensors.metadata(data))
        return SampleSet(tensors.loads(data)["inputs"], meta.labels, meta.ids), meta

    def _rewrite_batch(self, path: Path, keep: list[bool]) -> int:
        """Keep only some rows of a batch (deleting the file when none remain); returns how many were dropped."""
        if all(keep):
            return 0
        data = path.read_bytes()
        meta = BatchMeta.from_json(self._seq(path), tensors.metadata(data))
        dropped = keep.count(False)
        if not any(keep):
            path.unlink()
            _fsync_dir(path.parent)
            return dropped
        inputs = tensors.loads(data)["inputs"][[i for i, k in enumerate(keep) if k]]
        write_atomic(path, tensors.dumps({"inputs": inputs}, meta.select(keep).to_json()))
        return dropped

    def _experiences(self, name: str) -> list[ExperienceRecord]:
        return list(self._experience_log(name).records)

    def _experience_log(self, name: str) -> _ExperienceLog:
        """experiences.jsonl as stored and parsed, with what the claim derives from it: one JSON record per line,
        appended by each acknowledgement, so a reader parses only the lines added since it last read (another
        instance's included) and this instance's own appends extend it without reading (`_append_experience`).
        A store of format 2 kept one JSON list in experiences.json: read as it is until converted."""
        path = self._dir(name) / "experiences.jsonl"
        try:
            info = path.stat()
        except FileNotFoundError:
            return self._legacy_experience_log(name)
        cached = self._experience_cache.get(name)
        if cached is not None and cached.key == (path, info.st_ino) and cached.seen == info.st_size:
            return cached
        if cached is not None and cached.key == (path, info.st_ino) and info.st_size >= cached.size:
            log = cached.copy()  # the same file, grown: read what was appended
        else:
            log = _ExperienceLog((path, info.st_ino))
        with path.open("rb") as f:
            f.seek(log.size)
            log.read(f.read())
        log.seen = info.st_size
        self._experience_cache[name] = log
        return log

    def _legacy_experience_log(self, name: str) -> _ExperienceLog:
        path = self._dir(name) / "experiences.json"
        try:
            info = path.stat()
        except FileNotFoundError:
            return _ExperienceLog(None)
        key = (path, info.st_ino, info.st_size, info.st_mtime_ns)
        cached = self._experience_cache.get(name)
        if cached is not None and cached.key == key:
            return cached
        log = _ExperienceLog(key)
        for raw in _read_json(path):
            log.add(ExperienceRecord.from_json(raw))
        self._experience_cache[name] = log
        return log

    def _convert_experiences(self, name: str) -> None:
        """experiences.json (format 2) to experiences.jsonl: the new file whole and atomically, then the old one
        removed (a crash in between leaves both; the new one is read)."""
        legacy = self._dir(name) / "experiences.json"
        if not legacy.exists():
            return
        path = self._dir(name) / "experiences.jsonl"
        if not path.exists():  # the records as stored, byte for byte in content
            write_atomic(path, b"".join(_experience_line(raw) for raw in _read_json(legacy)))
        legacy.unlink()
        self._experience_cache.pop(name, None)

    def _consumed_upto(self, name: str) -> int:
        return self._experience_log(name).upto

    def _quarantine(self, name: str) -> dict[str, dict[str, Any]]:
        path = self._dir(name) / "quarantine.json"
        entries: dict[str, dict[str, Any]] = _read_json(path) if path.exists() else {}
        return entries

    def _set_aside(self, name: str) -> SetAside:
        """Carried, quarantined and exempt samples, from experiences.jsonl and quarantine.json: a sample deferred by
        an update or released from quarantine is carried (pending again, id → batch) until an experience lists it
        as consumed."""
        log = self._experience_log(name)
        carried, consumed = dict(log.carried), log.consumed
        quarantine = self._quarantine(name)
        for i, entry in quarantine.items():
            if entry.get("released"):
                carried[i] = int(entry["seq"])
            else:
                carried.pop(i, None)
        return SetAside(
            {i: seq for i, seq in carried.items() if i not in consumed},
            frozenset(i for i, entry in quarantine.items() if not entry.get("released")),
            frozenset(i for i, entry in quarantine.items() if entry.get("released")),
        )

    def _metas(self, name: str, seqs: Sequence[int]) -> list[BatchMeta]:
        """The metadata of the stored batches among ``seqs`` (in that order; gone ones are skipped)."""
        paths = [self._batch_path(name, seq) for seq in seqs]
        return [self._read_meta(path) for path in paths if path.exists()]

    def claim(self, name: str, *, limit: int | None = None) -> Claim:
        with self._lock(name):
            ledger = self._ledger(name)
            start = self._consumed_upto(name)
            aside = self._set_aside(name)
            shape = self.get_model(name).input_shape
            unconsumed = self._pending_metas(name, start, ledger.next_batch)
            plan = plan_claim(aside, self._metas(name, aside.carried_batches), unconsumed, start, limit)
            parts = [self._read_batch(self._batch_path(name, meta.seq))[0] for meta in plan.batches]
            return plan.claim(parts, shape)

    def _append_experience(self, name: str, record: ExperienceRecord) -> None:
        """The commit point of an acknowledgement: one line appended to experiences.jsonl and fsynced (the file is
        never rewritten, so the cost does not grow with the history); a torn line a crash left after the last
        complete one was never committed and is cut first.  The parsed log is extended, not read again."""
        self._convert_experiences(name)
        log = self._experience_log(name)
        raw = record.to_json()
        path = self._dir(name) / "experiences.jsonl"
        if not path.exists():
            write_atomic(path, _experience_line(raw))
        else:
            with path.open("r+b") as f:
                if f.seek(0, os.SEEK_END) != log.size:
                    f.truncate(log.size)
                    f.seek(log.size)
                f.write(_experience_line(raw))
                f.flush()
                os.fsync(f.fileno())
        info = path.stat()
        extended = log.copy() if log.key == (path, info.st_ino) else _ExperienceLog((path, info.st_ino))
        extended.add(record)
        extended.size = extended.seen = info.st_size
        self._experience_cache[name] = extended

    def ack(
        self,
        name: str,
        claim: Claim,
        version: int,
        update_id: str | None,
        *,
        fence: int | None = None,
        quarantined: Collection[str] = (),
        deferred: Collection[str] = (),
    ) -> None:
        with self._lock(name):
            self._check_fence(name, fence)
            if claim.token.after != self._consumed_upto(name):
                raise Conflict(f"samples of {name!r} were consumed by another update since this claim")
            experience = consumed_experience(claim, version, update_id, quarantined, deferred)
            held = consumed_held_out(claim, quarantined, deferred)
            self._mark_stale(name)
            self._commit_experience(name, experience, held)
            self._compact(name, experience, set(held.ids))
            self._ledger(name)  # the tally counted again here, not by the next post

    def _compact(self, name: str, experience: ExperienceRecord, moved: set[str]) -> None:
        """Drop from the batches an experience consumed the held-out rows that moved to the held-out store (a batch
        left without rows is removed); pending, deferred and quarantined rows stay where they are."""
        token, _, consumed = experience_parts(experience.claim)
        for seq in sorted({*range(token.after + 1, token.upto + 1), *consumed.values()}):
            path = self._batch_path(name, seq)
            if path.exists():
                self._rewrite_batch(path, [i not in moved for i in self._read_meta(path).ids])

    def quarantine(self, name: str, records: Sequence[QuarantineRecord], *, fence: int | None = None) -> None:
        with self._lock(name):
            self._check_fence(name, fence)
            entries = self._quarantine(name)
            for record in records:
                entries[record.id] = {**record.to_json(), "released": False}
            self._mark_stale(name)
            _write_json(self._dir(name) / "quarantine.json", entries)
            self._ledger(name)

    def quarantined(self, name: str) -> list[QuarantineRecord]:
        with self._lock(name):
            entries = [e for e in self._quarantine(name).values() if not e.get("released")]
            records = [QuarantineRecord.from_json(e) for e in entries]
            return sorted(records, key=lambda r: (r.at, int(r.id) if r.id.isdigit() else 0))

    def release_quarantine(self, name: str, ids: Sequence[str]) -> list[str]:
        ids = check_sample_ids(ids)
        with self._lock(name):
            entries = self._quarantine(name)
            released = [i for i in dict.fromkeys(ids) if i in entries and not entries[i].get("released")]
            for i in released:
                entries[i]["released"] = True
            if released:
                self._mark_stale(name)
                _write_json(self._dir(name) / "quarantine.json", entries)
                self._ledger(name)
            return released

    def add_experience(self, name: str, version: int, held_out: SampleSet, update_id: str | None) -> None:
        with self._lock(name):
            ledger = self._ledger(name)
            start = self._consumed_upto(name)
            if any(self._batch_path(name, seq).exists() for seq in range(start + 1, ledger.next_batch)):
                raise Conflict(f"model {name!r} has pending samples; import experiences before pending samples")
            first = ledger.next_sample
            ledger.next_sample += len(held_out)
            self._write_ledger(name, ledger)  # the ids are taken before anything holds them: never given twice
            samples = SampleSet(held_out.inputs, list(held_out.labels), [str(first + i) for i in range(len(held_out))])
            record = ExperienceRecord(version, update_id, ClaimToken(start, start).to_json(), held_out=len(held_out))
            self._commit_experience(name, record, samples)

    def experiences(self, name: str) -> list[ExperienceRecord]:
        with self._lock(name):
            return self._experiences(name)

    # -- the held-out store (registry.heldout) ---------------------------------------------------------------------
    # heldout/index.json is the index; heldout/<part>.safetensors the parts.  An acknowledgement writes the
    # experience's held-out rows as the next part first, then experiences.jsonl (the commit point), then folds them
    # into the index; an experience committed but not folded (a crash, or a store of format 1) is folded in by the
    # next call that reads or changes the held-out store, from that part or, failing it, from its batches.
    def _part_path(self, name: str, part: str) -> Path:
        return self._dir(name) / "heldout" / f"{int(part)}.safetensors"

    def _held_index(self, name: str) -> HeldOutIndex:
        """The index as stored: parsed again only when the file changed (its identity, size and time), since an
        update reads it several times; a copy, which the caller may change."""
        path = self._dir(name) / "heldout" / "index.json"
        try:
            info = path.stat()
        except FileNotFoundError:
            return HeldOutIndex()
        key = (path, info.st_ino, info.st_size, info.st_mtime_ns)
        cached = self._index_cache.get(name)
        if cached is None or cached[0] != key:
            cached = (key, HeldOutIndex.from_json(_read_json(path)))
            self._index_cache[name] = cached
        return cached[1].clone()

    def _write_held_index(self, name: str, index: HeldOutIndex) -> None:
        path = self._dir(name) / "heldout" / "index.json"
        _write_json(path, index.to_json(), compact=True)
        info = path.stat()
        self._index_cache[name] = ((path, info.st_ino, info.st_size, info.st_mtime_ns), index.clone())

    def _commit_experience(self, name: str, experience: ExperienceRecord, held: SampleSet) -> None:
        index = self._held_catch_up(name)
        if len(held):
            part = new_part(held, experience.version)
            write_atomic(
                self._part_path(name, str(index.next_part)), part.to_bytes(version=experience.version, at=experience.at)
            )
        self._append_experience(name, experience)
        self._fold(name, index, experience, held)

    def _fold(self, name: str, index: HeldOutIndex, experience: ExperienceRecord, held: SampleSet) -> None:
        """Offer an experience's held-out rows (already written as the next part) to the reservoirs; the part keeps
        the rows that got a slot."""
        staged = self._part_path(name, str(index.next_part))
        kept = index.offer(held.labels, held.ids, self.heldout_capacity)
        part, dead = index.fold(experience, [i for i, k in zip(held.ids, kept, strict=True) if k])
        self._write_held_index(name, index)
        if part is None:
            staged.unlink(missing_ok=True)
        elif not all(kept):
            write_atomic(staged, new_part(held, experience.version).select(kept).to_bytes())
        for p in dead:
            self._part_path(name, p).unlink(missing_ok=True)
        if index.crowded:
            self._consolidate(name, index)

    def _consolidate(self, name: str, index: HeldOutIndex) -> None:
        parts = {p: Part.from_bytes(self._part_path(name, p).read_bytes()) for p in index.parts}
        part, merged, replaced = consolidate(index, parts, self.get_model(name).input_shape)
        if len(merged.samples):
            write_atomic(self._part_path(name, part), merged.to_bytes())
        self._write_held_index(name, index)
        for p in replaced:
            if p != part:
                self._part_path(name, p).unlink(missing_ok=True)

    def _held_catch_up(self, name: str) -> HeldOutIndex:
        """The held-out index with every committed experience folded in."""
        index = self._held_index(name)
        experiences = self._experiences(name)
        for position in index.pending(experiences):
            experience = experiences[position]
            staged = self._part_path(name, str(index.next_part))
            header = Part.header(staged.read_bytes()) if staged.exists() else {}
            if (header.get("version"), header.get("at")) == (experience.version, experience.at):
                held = Part.from_bytes(staged.read_bytes()).samples
            else:  # not written by this experience's acknowledgement: its rows are still in its batches
                held = self._held_in_batches(name, experience)
                if len(held):
                    write_atomic(staged, new_part(held, experience.version).to_bytes())
            self._fold(name, index, experience, held)
        return index

    def _held_in_batches(self, name: str, experience: ExperienceRecord) -> SampleSet:
        """An experience's held-out rows as format 1 kept them: inside the batches it consumed."""
        shape = self.get_model(name).input_shape
        parts = []
        for seq in experience_batches(experience.claim, [self._seq(p) for p in self._batches(name)]):
            batch, meta = self._read_batch(self._batch_path(name, seq))
            parts.append(batch.select(experience_mask(experience.claim, meta)))
        return SampleSet.concat(parts, shape)

    def _held_parts(self, name: str, index: HeldOutIndex) -> dict[str, Part]:
        """The parts the index lists, each parsed again only when its file changed (identity, size, time): an
        update reads the held-out store once and adds one part, so it reads that part, not the whole store."""
        cached = self._part_cache.get(name, {})
        parts: dict[str, Part] = {}
        fresh: dict[str, tuple[Any, Part]] = {}
        for p in index.parts:
            path = self._part_path(name, p)
            info = path.stat()
            key = (path, info.st_ino, info.st_size, info.st_mtime_ns)
            hit = cached.get(p)
            part = hit[1] if hit is not None and hit[0] == key else Part.from_bytes(path.read_bytes())
            parts[p], fresh[p] = part, (key, part)
        self._part_cache[name] = fresh  # only the listed parts: the cache is as bounded as the store
        return parts

    def held_out_rows(self, name: str) -> HeldOut:
        with self._lock(name):
            shape = self.get_model(name).input_shape
            index = self._held_catch_up(name)
            return grouped(index, self._held_parts(name, index), shape)

    def experience_samples(self, name: str, version: int) -> SampleSet:
        with self._lock(name):
            found = self.held_out_rows(name).experience(version)
            return found if found is not None else empty(self.get_model(name).input_shape)

    def _forget_held(self, name: str, wanted: set[str]) -> set[str]:
        """Remove samples from the held-out store, index first, then every part file that stores any of them
        (the headers of all parts are read: a crash may have left a row the index no longer lists)."""
        index = self._held_catch_up(name)
        index.remove(wanted)
        dead = index.drop_dead_parts()
        self._write_held_index(name, index)
        found: set[str] = set()
        hdir = self._dir(name) / "heldout"
        for path in sorted(hdir.glob("*.safetensors")) if hdir.exists() else []:
            stored = [str(i) for i in Part.header(path.read_bytes())["ids"]]
            hit = wanted.intersection(stored)
            if not hit:
                continue
            found |= hit
            part = Part.from_bytes(path.read_bytes()).without(hit)
            if len(part.samples) and path.stem not in dead:
                write_atomic(path, part.to_bytes())
            else:
                path.unlink()
        for p in dead:
            self._part_path(name, p).unlink(missing_ok=True)
        return found

    def delete_samples(self, name: str, ids: Sequence[str]) -> int:
        wanted = set(check_sample_ids(ids))  # all or nothing: one bad id and nothing is deleted
        with self._lock(name):
            self._mark_stale(name)
            _write_json(self._dir(name) / "deleted.json", sorted(self.deleted_ids(name) | {int(i) for i in wanted}))
            found: set[str] = set()
            if wanted:
                for path in self._batches(name):
                    hit = wanted.intersection(self._read_meta(path).ids)
                    if hit:
                        self._rewrite_batch(path, [i not in hit for i in self._read_meta(path).ids])
                        found |= hit
                found |= self._forget_held(name, wanted)
                found |= self._forget_captures(name, wanted)
            entries = self._quarantine(name)
            if wanted & set(entries):
                _write_json(self._dir(name) / "quarantine.json", {i: e for i, e in entries.items() if i not in wanted})
            self._compact_requests(name)
            self._ledger(name)
            return len(found)

    def _deletion_record(self, name: str) -> tuple[set[int], list[object]]:
        path = self._dir(name) / "deleted.json"
        entries = _read_json(path) if path.exists() else []
        return tombstones(name, entries if isinstance(entries, list) else [entries])

    def deleted_ids(self, name: str) -> set[int]:
        return self._deletion_record(name)[0]

    def repair_deleted_ids(self, name: str) -> int:
        with self._lock(name):
            valid, invalid = self._deletion_record(name)
            if invalid:
                _write_json(self._dir(name) / "deleted.json", sorted(valid))
                log.warning("repaired the deletion record of model %r: dropped %d invalid id(s)", name, len(invalid))
            return len(invalid)

    def apply_retention(
        self, name: str, *, max_age_s: float | None, max_samples: int | None, protect: Collection[str] = ()
    ) -> dict[str, int]:
        with self._lock(name):
            self._ledger(name)
            self._held_catch_up(name)  # every experience's held-out rows are in the held-out store before this
            consumed = self._consumed_upto(name)
            aside = self._set_aside(name)
            retention = RetentionPass(time.time(), max_age_s, max_samples, frozenset(protect) | aside.kept_by_retention)
            for path in reversed(self._batches(name)):  # newest first: the newest max_samples survive
                if self._seq(path) > consumed:
                    continue  # pending samples stay until trained
                meta = self._read_meta(path)
                keep = retention.mask(meta)
                self._rewrite_batch(path, keep)
                retention.record(meta, keep)
            self._compact_requests(name)
        return retention.dropped

    def pending_counts(self, name: str) -> PendingCounts:
        with self._lock(name):
            pending = self._ledger(name).pending
            assert pending is not None  # counted by _ledger
            return pending

    # -- captured prediction traffic (registry.captures) --------------------------------------------------------------
    # captures/index.json is the reservoir's index; captures/rows/<id>.safetensors one capture's input each.  Rows are
    # written before the index that lists them, without fsync: a crash loses at most the captures of its last moments
    # (a row the index lists but the disk lost is dropped when it is read); rows no index lists are swept at
    # acknowledgements.
    def _capture_index(self, name: str) -> CaptureIndex:
        path = self._dir(name) / "captures" / "index.json"
        return CaptureIndex.from_json(_read_json(path)) if path.exists() else CaptureIndex()

    def _write_capture_index(self, name: str, index: CaptureIndex) -> None:
        # compact: json's C encoder (an indented dump runs in Python, holding the GIL the predict path needs)
        data = json.dumps(index.to_json(), separators=(",", ":")).encode()
        write_atomic(self._dir(name) / "captures" / "index.json", data)

    def _rows(self, name: str) -> Path:
        return self._dir(name) / "captures" / "rows"

    @staticmethod
    def _row_path(rows: Path, sample_id: str) -> Path:
        return rows / f"{check_sample_id(sample_id)}.safetensors"

    def _write_row(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def _read_rows(self, name: str, ids: Sequence[str], shape: Sequence[int]) -> dict[str, Tensor]:
        rows, where = {}, self._rows(name)
        for sample_id in ids:
            try:
                row = row_tensor(self._row_path(where, sample_id).read_bytes(), shape)
            except FileNotFoundError:
                row = None
            if row is not None:
                rows[sample_id] = row
        return rows

    def _drop_rows(self, name: str, ids: Iterable[str]) -> None:
        where = self._rows(name)
        for sample_id in ids:
            self._row_path(where, sample_id).unlink(missing_ok=True)

    def reserve_ids(self, name: str, count: int) -> int:
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_RESERVE:
            raise ValueError(f"reserve 1 to {MAX_RESERVE} ids at a time, not {count!r}")
        with self._lock(name):
            ledger = self._ledger(name)
            first = ledger.next_sample
            ledger.next_sample += count
            self._write_ledger(name, ledger)
            return first

    def add_captures(self, name: str, inputs: Tensor, ids: Sequence[str], capacity: int) -> list[str]:
        ids = check_sample_ids(ids)
        if len(ids) != len(inputs):
            raise ValueError(f"{len(inputs)} captured inputs with {len(ids)} ids")
        with self._lock(name):
            deleted = self.deleted_ids(name)
            index = self._capture_index(name)
            stored, evicted = index.offer([i for i in ids if int(i) not in deleted], time.time(), capacity)
            rows, where = dict(zip(ids, inputs, strict=True)), self._rows(name)
            for sample_id in stored:
                self._write_row(self._row_path(where, sample_id), row_bytes(rows[sample_id]))
            self._write_capture_index(name, index)
            self._drop_rows(name, evicted)
            return stored

    def claim_captures(self, name: str) -> CaptureClaim:
        with self._lock(name):
            shape = self.get_model(name).input_shape
            index = self._capture_index(name)
            pending = index.pending
            rows = self._read_rows(name, [s.id for s in pending], shape)
            lost = [s.id for s in pending if s.id not in rows]
            if lost:  # torn by a crash: gone
                index.remove(lost)
                self._write_capture_index(name, index)
                self._drop_rows(name, lost)
            return CaptureClaim(gather(pending, rows, shape), index.next_seq - 1)

    def ack_captures(self, name: str, claim: CaptureClaim, *, fence: int | None = None) -> None:
        with self._lock(name):
            self._check_fence(name, fence)
            index = self._capture_index(name)
            index.consume(claim.upto)
            self._write_capture_index(name, index)
            rows = self._rows(name)
            if rows.is_dir():  # rows of captures a crash kept out of the index
                listed = index.ids
                for path in rows.glob("*.safetensors"):
                    if path.stem not in listed:
                        path.unlink(missing_ok=True)

    def label_captures(self, name: str, items: Sequence[tuple[str, str]], holdout_fraction: float) -> FeedbackResult:
        ids = check_sample_ids([i for i, _ in items])
        if len(set(ids)) != len(ids):
            raise ValueError("feedback names an id more than once")
        labels = {i: label for i, (_, label) in zip(ids, items, strict=True)}
        with self._lock(name):
            shape = self.get_model(name).input_shape
            index = self._capture_index(name)
            stored = index.ids
            rows = self._read_rows(name, [i for i in ids if i in stored], shape)
            lost = [i for i in ids if i in stored and i not in rows]
            index.remove(lost)
            status = index.take(ids)
            accepted = [i for i in ids if status[i] == "accepted"]
            held: dict[str, bool] = {}
            if accepted:
                inputs = torch.stack([rows[i] for i in accepted])
                _, flags = self._store_batch(
                    name, self._ledger(name), inputs, [labels[i] for i in accepted], holdout_fraction, ids=accepted
                )
                held = dict(zip(accepted, flags, strict=True))
            if accepted or lost:
                self._write_capture_index(name, index)
                self._drop_rows(name, [*accepted, *lost])
            return FeedbackResult(status, held, {i: labels[i] for i in accepted})

    def trim_captures(self, name: str, capacity: int, *, max_age_s: float | None = None) -> int:
        with self._lock(name):
            index = self._capture_index(name)
            dropped = index.trim(capacity, max_age_s=max_age_s)
            if dropped:
                self._write_capture_index(name, index)
                self._drop_rows(name, dropped)
            return len(dropped)

    def capture_counts(self, name: str) -> CaptureCounts:
        with self._lock(name):
            return self._capture_index(name).counts()

    def _forget_captures(self, name: str, wanted: set[str]) -> set[str]:
        index = self._capture_index(name)
        found = index.remove(wanted)
        if found:
            self._write_capture_index(name, index)
            self._drop_rows(name, found)
        return set(found)

    # -- migration from format 1 ------------------------------------------------------------------------------------
    def _migrate_from_1(self) -> None:
        """Format 1 kept held-out rows inside the batches, the numbers in counters.json and no request log: build
        the ledger, the request log and the held-out store of every model, then drop the held-out rows the store
        now holds from the consumed batches.  Every step can run again (a crash during the migration leaves
        format 1 in FORMAT, and the next start runs it again)."""
        for model in self.list_models():
            name = model.name
            with self._lock(name):
                batches = self._batches(name)
                if not (self._dir(name) / "ingest.json").exists():
                    counters = self._counters(name)
                    ledger = _Ledger(
                        int(counters["next_batch"]), int(counters["next_sample"]), dict(counters["per_class"])
                    )
                    if batches:
                        newest = self._read_meta(batches[-1])
                        ledger.next_batch = max(ledger.next_batch, newest.seq + 1)
                        ledger.next_sample = max([ledger.next_sample, *(int(i) + 1 for i in newest.ids)])
                    self._write_ledger(name, ledger)
                if not (self._dir(name) / "requests.log").exists():
                    keys = [(self._seq(p), self._read_meta(p).request_key) for p in batches]
                    write_atomic(self._dir(name) / "requests.log", "".join(f"{s} {k}\n" for s, k in keys if k).encode())
                self._held_catch_up(name)
                consumed, keep = self._consumed_upto(name), self._set_aside(name).kept_by_retention
                for path in batches:
                    if self._seq(path) <= consumed and path.exists():
                        meta = self._read_meta(path)
                        self._rewrite_batch(
                            path, [not h or i in keep for i, h in zip(meta.ids, meta.held_out, strict=True)]
                        )
                self._mark_stale(name)
                self._ledger(name)
        log.info("migrated the store at %s from format 1 to %d", self.root, FORMAT_VERSION)

    # -- updates --------------------------------------------------------------------------------------------------
    def _update_order(self, name: str) -> Path:
        return self._dir(name) / "update-order"

    def _order_entries(self, name: str) -> list[tuple[int, str]]:
        """(sequence number, update id) of every stored update, ascending: the names in update-order/ (a listing
        of names, no record is read).  An id listed twice (a crash between its place and its record, then a retry)
        is in its newest place."""
        odir = self._update_order(name)
        newest: dict[str, int] = {}
        for entry in os.scandir(odir) if odir.exists() else ():
            seq, _, update_id = entry.name.partition(".")
            if seq.isdigit() and is_update_id(update_id):
                newest[update_id] = max(int(seq), newest.get(update_id, 0))
        return sorted((seq, update_id) for update_id, seq in newest.items())

    def _update_index(self, name: str) -> dict[str, Any]:
        """{"next": the next sequence number, "active": ids of queued and running updates}, from
        update-index.json; a store written before the index existed gets one built from its records, once."""
        path = self._dir(name) / "update-index.json"
        if path.exists():
            index: dict[str, Any] = _read_json(path)
            return index
        records = [UpdateRecord.from_json(_read_json(p)) for p in (self._dir(name) / "updates").glob("*.json")]
        records.sort(key=lambda r: (r.created_at, r.update_id))
        odir = self._update_order(name)
        for old in os.scandir(odir) if odir.exists() else ():  # a rebuild a crash interrupted
            Path(old.path).unlink(missing_ok=True)
        self._place(name, [(seq, r.update_id) for seq, r in enumerate(records, 1)])
        index = {"next": len(records) + 1, "active": [r.update_id for r in records if not r.finished]}
        _write_json(path, index)
        return index

    def _place(self, name: str, entries: Sequence[tuple[int, str]]) -> None:
        """Create the (empty) order entries of updates: nothing to flush but the directory."""
        odir = self._update_order(name)
        odir.mkdir(exist_ok=True)
        for seq, update_id in entries:
            os.close(os.open(odir / f"{seq:012d}.{update_id}", os.O_CREAT | os.O_WRONLY, 0o644))
        _fsync_dir(odir)

    def _write_update_index(self, name: str, index: dict[str, Any]) -> None:
        _write_json(self._dir(name) / "update-index.json", index)

    def put_update(self, record: UpdateRecord) -> None:
        name = record.model
        with self._lock(name):
            path = self._update_path(name, record.update_id, ".json")
            index = self._update_index(name)
            active = record.update_id in index["active"]
            if not path.exists():  # a new record: its place in the order, then the index, then the record
                seq = int(index["next"])
                self._place(name, [(seq, record.update_id)])
                index["next"] = seq + 1
                if not record.finished:
                    index["active"].append(record.update_id)
                self._write_update_index(name, index)
            elif not record.finished and not active:
                index["active"].append(record.update_id)
                self._write_update_index(name, index)
            _write_json(path, record.to_json())
            if record.finished and active:  # after the record: a crash leaves an entry readers filter out
                index["active"].remove(record.update_id)
                self._write_update_index(name, index)

    def get_update(self, name: str, update_id: str) -> UpdateRecord:
        path = self._update_path(name, update_id, ".json")
        if not path.exists():
            raise NotFound(f"model {name!r} has no update {update_id!r}")
        return UpdateRecord.from_json(_read_json(path))

    def request_cancel(self, name: str, update_id: str) -> None:
        self.get_update(name, update_id)
        write_atomic(self._update_path(name, update_id, ".cancel"), b"")

    def cancel_requested(self, name: str, update_id: str) -> bool:
        return self._update_path(name, update_id, ".cancel").exists()

    def _records(self, name: str, ids: Sequence[str]) -> list[UpdateRecord]:
        """The stored records among ``ids`` (gone ones skipped), in that order."""
        out = []
        model_dir = self._dir(name)
        for update_id in ids:
            path = self._update_path(name, update_id, ".json", model_dir)
            if path.exists():
                out.append(UpdateRecord.from_json(_read_json(path)))
        return out

    def active_updates(self, name: str) -> list[UpdateRecord]:
        with self._lock(name):
            records = self._records(name, self._update_index(name)["active"])
        return sorted((r for r in records if not r.finished), key=lambda r: (r.created_at, r.update_id))

    def create_update(
        self, record: UpdateRecord, *, max_queued: int | None = None, join_queued: bool = False
    ) -> UpdateRecord:
        if max_queued is not None and max_queued < 1:
            raise ValueError(f"max_queued must be at least 1, got {max_queued}")
        with self._lock(record.model):  # the check and the write under the model's lock: one step for every thread
            try:
                return self.get_update(record.model, record.update_id)
            except NotFound:
                pass
            queued = [u for u in self.active_updates(record.model) if u.status == "queued"]  # oldest first
            if join_queued and queued:
                return queued[-1]
            if max_queued is not None and len(queued) >= max_queued:
                raise QueueFull(record.model, len(queued), max_queued)
            self.put_update(record)
            return record

    def list_updates(self, name: str) -> list[UpdateRecord]:
        udir = self._dir(name) / "updates"
        records = [UpdateRecord.from_json(_read_json(p)) for p in udir.glob("*.json")] if udir.exists() else []
        return sorted(records, key=lambda r: (r.created_at, r.update_id))

    def updates_page(self, name: str, *, limit: int, before: int | None = None) -> Page[UpdateRecord]:
        limit, before = check_page(limit, before)
        with self._lock(name):
            self._update_index(name)  # built for a store that predates it
        entries = [e for e in self._order_entries(name) if before is None or e[0] < before]
        chosen = entries[::-1][:limit]
        records = self._records(name, [update_id for _, update_id in chosen])  # deleted since: skipped
        return Page(records, chosen[-1][0] if len(entries) > len(chosen) else None)

    def trim_updates(self, name: str, keep_finished: int) -> int:
        if keep_finished < 0:
            raise ValueError(f"keep_finished must be at least 0, got {keep_finished}")
        with self._lock(name):
            index = self._update_index(name)
            still = {r.update_id for r in self._records(name, index["active"]) if not r.finished}
            if still != set(index["active"]):  # drop entries a crash left behind
                index["active"] = [i for i in index["active"] if i in still]
                self._write_update_index(name, index)
            entries = self._order_entries(name)
            finished = [(seq, i) for seq, i in entries if i not in still]
            deleted = 0
            for _, update_id in finished[: max(0, len(finished) - keep_finished)]:  # oldest first
                self._update_path(name, update_id, ".json").unlink(missing_ok=True)
                self._update_path(name, update_id, ".cancel").unlink(missing_ok=True)
                for marker in self._update_order(name).glob(f"*.{update_id}"):  # ids hold no glob characters
                    marker.unlink(missing_ok=True)
                deleted += 1
            return deleted

    # -- idempotent answers ----------------------------------------------------------------------------------------
    def _answer_path(self, name: str, key: str) -> Path:
        return self._dir(name) / "answers" / f"{hashlib.sha256(key.encode()).hexdigest()}.json"

    def remember(self, name: str, key: str, value: dict[str, Any], ttl_s: float) -> None:
        with self._lock(name):
            now = time.time()
            adir = self._dir(name) / "answers"
            if adir.exists() and now - self._pruned.get(name, 0.0) > 60:  # expired answers go, once a minute
                self._pruned[name] = now
                for path in adir.glob("*.json"):
                    if _read_json(path)["expires"] < now:
                        path.unlink(missing_ok=True)
            _write_json(self._answer_path(name, key), {"expires": now + ttl_s, "value": value})

    def recall(self, name: str, key: str) -> dict[str, Any] | None:
        path = self._answer_path(name, key)
        if not path.exists():
            return None
        entry = _read_json(path)
        value: dict[str, Any] | None = entry["value"] if entry["expires"] >= time.time() else None
        return value

    # -- update lock (in-process; the embedded mode is one process) ------------------------------------------------
    def acquire_update_lock(self, name: str, owner: str, ttl_s: float) -> int | None:
        with self._lock(name):
            self._dir(name)
            held = self._update_locks.get(name)
            if held is not None and held[1] > time.monotonic():
                return None
            token = self._fences.get(name, 0) + 1
            self._fences[name] = token
            self._update_locks[name] = (token, time.monotonic() + ttl_s, owner)
            return token

    def refresh_update_lock(self, name: str, token: int, ttl_s: float) -> bool:
        with self._lock(name):
            held = self._update_locks.get(name)
            if held is None or held[0] != token or held[1] <= time.monotonic():
                return False
            self._update_locks[name] = (token, time.monotonic() + ttl_s, held[2])
            return True

    def release_update_lock(self, name: str, token: int) -> None:
        with self._lock(name):
            held = self._update_locks.get(name)
            if held is not None and held[0] == token:
                del self._update_locks[name]

    def update_lock_holder(self, name: str) -> LockHolder | None:
        with self._lock(name):
            self._dir(name)
            held = self._update_locks.get(name)
            left = None if held is None else held[1] - time.monotonic()
            if held is None or left is None or left <= 0:
                return None
            return LockHolder(owner=held[2], token=held[0], expires_in_s=left)
