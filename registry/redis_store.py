"""The distributed store: every model's versions, samples, updates and live pointer in Redis.

Same contract as `LocalStore` (tests/registry run against both), for many API replicas and Celery workers at once.
The key layout and the operator notes are in docs/distributed.md; in short (``P`` = ``cl:{<model>}:``, the hash tag
keeps a model's keys in one slot)::

    cl:models                  SET     model names
    P model                    STRING  ModelRecord JSON (the model exists iff this key does)
    P live                     STRING  the live version number (absent: none)
    P promotion                STRING  the signed promotion record of the live pointer (registry.signing; absent:
                                       unsigned), changed by the same script as the pointer
    P versions / P vseq        ZSET    committed version numbers / STRING the last number ever given (never reused)
    P v:<n>                    HASH    meta (VersionRecord JSON), weights / state (safetensors bytes) or, above the
                                       chunk size, weights@ / state@ = "<blob> <count>" naming P blob:<blob>:<i>;
                                       pinned = "1" while an operator pins it (retention keeps it)
    P v:<n>:promotions         LIST    Promotion JSON, oldest first
    P blob:<blob>:<i>          STRING  one chunk of a large value (written with an expiry, made permanent by the
                                       commit that references it, so an interrupted commit leaves nothing behind)
    P b:<seq>                  HASH    one ingestion batch: meta JSON (labels, ids, held-out flags, arrival time,
                                       request key), train and held payloads kept apart (evaluation data never
                                       enters a training payload)
    P batches                  ZSET    stored batch numbers
    P stream                   STREAM  one entry per pending batch (id <seq>-0), read by consumer group "updates"
                                       (an acknowledgement trims what it consumed)
    P held                     HASH    the held-out store (registry.heldout): index JSON, its gen, and the parts
                                       p:<part> (or p:<part>@ "<blob> <count>" when chunked)
    P tally / P sgen           STRING  the pending counts, valid for the batch and sample-state generation they
                                       name / that generation (changed by every change of what is pending other
                                       than a post: a post's cost does not grow with the backlog)
    P acked                    STRING  the newest batch consumed by a committed version
    P experiences              LIST    ExperienceRecord JSON: which batches each version consumed (and which of
                                       their samples it left out)
    P carried                  HASH    id → batch of samples pending again inside consumed batches (deferred by
                                       an update, or released from quarantine)
    P quarantine / P exempt    HASH    id → QuarantineRecord JSON / SET ids released from quarantine (exempt from
                                       label screening)
    P bseq / P sseq / P classes        batch and sample counters, labeled samples per class (the hold-out policy)
    P requests / P deleted             request key → batch (idempotent ingestion) / tombstoned sample ids
                                       (canonical decimals; `repair_deleted_ids` drops anything else)
    P updates / P cancel               update id → UpdateRecord JSON / ids flagged for cancellation (a new update
                                       is stored by a script that counts the queued ones: the queue limit)
    P useq / P uorder / P active       the last update sequence number / ZSET every update id by its sequence
                                       number (pages, trimming) / ZSET the queued and running ones (the queue
                                       limit reads only these), all changed with the record by one script
    P answer:<sha256>          STRING  remembered answers (with their expiry)
    P capture / P caprows      HASH    the capture reservoir (registry.captures): its index JSON and gen / one
                                       field per stored capture, id → its input (safetensors)
    P lock / P fence           STRING  the update lock "<token> <owner>" (with expiry) / the newest fencing token
    P op:<id>                  STRING  result of a finished script call, so a call retried after a lost reply
                                       applies once
    cl:fence                   STRING  the counter fencing tokens come from (strictly increasing for every model)
    channel cl:db<N>:live      pub/sub: {"model": name, "version": n | null} on every pointer change

Every multi-key change is one Lua script or one WATCH/MULTI transaction, so it happens entirely or not at all.
A key is built only from a checked model name (`registry.names`: no brace, colon or glob character can reach the
key scheme), a checked version number or update id.
Connection problems surface as `StoreUnavailable`; the same store object works again once Redis is back.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
import torch
from redis.backoff import ExponentialBackoff
from redis.client import Pipeline
from redis.exceptions import WatchError
from redis.retry import Retry
from torch import Tensor

from cl_core.validation import shown
from registry import redis_scripts as scripts
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
from registry.errors import Conflict, NotFound, QueueFull, StoreError, StoreUnavailable
from registry.heldout import DEFAULT_CAPACITY, HeldOut, HeldOutIndex, Part, consolidate, empty, grouped, new_part
from registry.names import (
    check_model_name,
    check_page,
    check_request_key,
    check_sample_ids,
    check_update_id,
    check_version,
    is_model_name,
    tombstones,
)
from registry.records import (
    ExperienceRecord,
    LivePointer,
    LockHolder,
    ModelRecord,
    Page,
    QuarantineRecord,
    UpdateRecord,
    VersionCounts,
    VersionRecord,
)
from registry.redis_notify import Notifier
from registry.samples import (
    BatchMeta,
    Claim,
    ClaimPlan,
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

DEFAULT_CHUNK_BYTES = 8 * 1024 * 1024
"""Values above this are split: far below Redis's 512 MB limit, and small enough not to stall other clients."""
GROUP = "updates"
OP_TTL_MS = 3_600_000  # how long a finished script call is remembered (retries come within seconds)
STAGING_TTL_MS = 6 * 3_600_000  # chunks of a commit that never happened expire after this
_TRANSACTION_ATTEMPTS = 200
_BATCH_KEYS = ("model", "classes", "bseq", "sseq", "requests", "tally", "sgen")
"""What appending a batch reads: a transaction that appends one watches them."""
_UNAVAILABLE_REPLIES = ("OOM", "READONLY", "MISCONF", "LOADING", "NOAUTH", "WRONGPASS", "NOPERM", "MASTERDOWN")

P = ParamSpec("P")
R = TypeVar("R")
Staged = tuple[str, bytes | str]
"""A payload as `RedisStore._stage` left it: ("i", bytes) inline, or ("c", "<blob> <count>") in expiring chunks."""


def redact(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _Moved(Exception):
    """A chunked value was rewritten or deleted while being read: read its reference again."""


def _translated(method: Callable[Concatenate[RedisStore, P], R]) -> Callable[Concatenate[RedisStore, P], R]:
    """Redis's errors as the store's: unreachable → StoreUnavailable, script verdicts → NotFound / Conflict."""

    @functools.wraps(method)
    def wrapper(self: RedisStore, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(f"Redis at {self.where} is unreachable ({exc})") from exc
        except redis.ResponseError as exc:
            raise self._verdict(exc) from exc

    return wrapper


@dataclass(frozen=True)
class _Tally:
    """P tally: the pending counts as of the batch numbered ``upto`` and the sample-state generation ``basis``
    (P sgen, which every change of what is pending other than an append increments)."""

    basis: int
    upto: int
    counts: PendingCounts

    @classmethod
    def read(cls, raw: bytes | str | None, sgen: bytes | str | None, upto: int) -> _Tally | None:
        """The stored tally if it is current (same generation, up to batch ``upto``), else None."""
        if raw is None:
            return None
        data = json.loads(raw)
        tally = cls(int(data["basis"]), int(data["upto"]), PendingCounts.from_json(data["counts"]))
        return tally if (tally.basis, tally.upto) == (int(sgen or 0), upto) else None

    def to_raw(self) -> str:
        return json.dumps({"basis": self.basis, "upto": self.upto, "counts": self.counts.to_json()})


@dataclass
class _Batch:
    """One ingestion batch as read back: its metadata, training rows and held-out rows."""

    meta: BatchMeta
    train: SampleSet
    held: SampleSet


class RedisStore(Store):
    """The store in Redis, shared by every API replica and worker (thread-safe; one per process is enough)."""

    def __init__(
        self,
        url: str,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        prefix: str = "cl",
        socket_timeout_s: float = 60.0,
        signer: Signer | None = None,
        heldout_capacity: int = DEFAULT_CAPACITY,
    ) -> None:
        if chunk_bytes < 1:
            raise ValueError("chunk_bytes must be positive")
        if heldout_capacity < 1:
            raise ValueError(f"heldout_capacity must be at least 1, got {heldout_capacity}")
        self.heldout_capacity = heldout_capacity
        self._signer = signer
        self.where = redact(url)
        self.chunk_bytes = chunk_bytes
        self._prefix = prefix
        options: dict[str, Any] = {
            "socket_connect_timeout": 5,
            "socket_timeout": socket_timeout_s,
            # a stale connection (Redis restarted) is retried once on a fresh one; an outage fails within a second
            "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        }
        self._redis = redis.Redis.from_url(url, **options)
        db = self._redis.connection_pool.connection_kwargs.get("db", 0)
        self.channel = f"{prefix}:db{db}:live"  # pub/sub ignores database numbers: the channel names one
        self._consumer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._update_indexed: set[str] = set()  # models whose update indexes this process found complete
        # name → part → ((index seed, the part's ids), part): a stored part's rows are fixed by its name and ids (a
        # rewrite that drops rows changes the ids; a model made again gets a new seed), so a part is fetched once
        self._part_cache: dict[str, dict[str, tuple[tuple[int, tuple[str, ...]], Part]]] = {}
        self._scripts = {
            name: self._redis.register_script(source)
            for name, source in {
                "create_model": scripts.CREATE_MODEL,
                "delete_model": scripts.DELETE_MODEL,
                "commit_version": scripts.COMMIT_VERSION,
                "rewrite_state": scripts.REWRITE_STATE,
                "delete_version": scripts.DELETE_VERSION,
                "pin_version": scripts.PIN_VERSION,
                "prune_version": scripts.PRUNE_VERSION,
                "put_update": scripts.PUT_UPDATE,
                "trim_updates": scripts.TRIM_UPDATES,
                "promote": scripts.PROMOTE,
                "ack": scripts.ACK,
                "quarantine": scripts.QUARANTINE,
                "release": scripts.RELEASE,
                "create_update": scripts.CREATE_UPDATE,
                "request_cancel": scripts.REQUEST_CANCEL,
                "set": scripts.GUARDED_SET,
                "sadd": scripts.GUARDED_SADD,
                "acquire_lock": scripts.ACQUIRE_LOCK,
                "refresh_lock": scripts.REFRESH_LOCK,
                "release_lock": scripts.RELEASE_LOCK,
            }.items()
        }
        self._notifier = Notifier(
            lambda: redis.Redis.from_url(url, health_check_interval=5, **options),
            self.channel,
            self._pointers,
            self.deliver,
        )

    def __repr__(self) -> str:
        return f"RedisStore({self.where})"

    # -- helpers --------------------------------------------------------------------------------------------------
    def _p(self, name: str) -> str:
        return f"{self._prefix}:{{{check_model_name(name)}}}:"

    def _k(self, name: str, *parts: object) -> str:
        return self._p(name) + ":".join(str(p) for p in parts)

    def _names(self) -> list[str]:
        """Every model's name, sorted; a name that is not valid (stored by code that did not check names) is left
        out, with a warning: no key is built from it."""
        names = sorted(_text(n) for n in self._redis.smembers(f"{self._prefix}:models"))
        invalid = [n for n in names if not is_model_name(n)]
        if invalid:
            log.warning("ignoring model(s) whose names are not valid: %s", ", ".join(map(shown, invalid)))
        return [n for n in names if is_model_name(n)]

    def _run(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return self._scripts[script](keys=list(keys), args=list(args))

    def _verdict(self, exc: redis.ResponseError) -> StoreError | redis.ResponseError:
        message = str(exc)
        kind, _, rest = message.partition(" ")
        if kind == "NOTFOUND":
            return NotFound(rest)
        if kind == "CONFLICT":
            return Conflict(rest)
        if kind == "NOGROUP":
            return NotFound("the model was deleted while this call ran")
        if kind in _UNAVAILABLE_REPLIES or message.startswith(_UNAVAILABLE_REPLIES):
            return StoreUnavailable(f"Redis at {self.where} refused the command: {message}")
        return exc

    def _exists(self, pipe: Pipeline, name: str) -> None:
        """Queue the model's existence check as the pipeline's first reply (see `_checked`)."""
        pipe.exists(self._k(name, "model"))

    @staticmethod
    def _checked(name: str, replies: list[Any]) -> list[Any]:
        if not replies[0]:
            raise NotFound(f"model {name!r} does not exist")
        return replies[1:]

    def _read(self, name: str, queue: Callable[[Pipeline], object]) -> list[Any]:
        """Replies of the commands ``queue`` adds, read atomically with the model's existence."""
        pipe = self._redis.pipeline(transaction=True)
        self._exists(pipe, name)
        queue(pipe)
        return self._checked(name, pipe.execute())

    def _stage(self, name: str, data: bytes) -> Staged:
        """("i", bytes) to store inline, or ("c", "<blob> <count>") after writing the chunks with an expiry (the
        commit that references them makes them permanent)."""
        if len(data) <= self.chunk_bytes:
            return "i", data
        blob = uuid.uuid4().hex
        count = math.ceil(len(data) / self.chunk_bytes)
        view = memoryview(data)
        pipe = self._redis.pipeline(transaction=False)
        for i in range(count):
            chunk = view[i * self.chunk_bytes : (i + 1) * self.chunk_bytes]
            pipe.set(self._k(name, "blob", blob, i), chunk, px=STAGING_TTL_MS)
            if i % 4 == 3:
                pipe.execute()
        pipe.execute()
        return "c", f"{blob} {count}"

    def _chunk_keys(self, name: str, ref: bytes | str | None) -> list[str]:
        if ref is None:
            return []
        blob, count = _text(ref).split()
        return [self._k(name, "blob", blob, i) for i in range(int(count))]

    def _unstage(self, name: str, staged: list[Staged]) -> None:
        keys = [k for mode, value in staged if mode == "c" for k in self._chunk_keys(name, value)]
        if keys:
            with suppress(redis.RedisError):
                self._redis.unlink(*keys)

    def _payload(self, name: str, inline: bytes | None, ref: bytes | None) -> bytes | None:
        if inline is not None:
            return inline
        if ref is None:
            return None
        keys = self._chunk_keys(name, ref)
        parts: list[bytes] = []
        for start in range(0, len(keys), 4):  # bounded replies
            got: list[bytes | None] = self._redis.mget(keys[start : start + 4])  # type: ignore[assignment]
            for part in got:
                if part is None:
                    raise _Moved()
                parts.append(part)
        return b"".join(parts)

    def _optimistic(self, name: str, what: str, attempt: Callable[[Pipeline, list[Staged]], R]) -> R:
        """``attempt`` as one WATCH/MULTI transaction, run again (a bounded number of times) while another client
        changes a watched key under it: the one optimistic-transaction loop of the store.

        ``attempt(pipe, staged)`` watches the keys it reads, reads them, then queues its writes after
        ``pipe.multi()`` and executes them, or returns without writing.  It lists the chunks it stages in
        ``staged``: they are removed whenever the attempt does not commit.  A chunked value that moved while being
        read (`_Moved`) counts as a change too.  Contention beyond the bound raises StoreUnavailable (``what``
        says what failed); an outage raises from the ping between attempts."""
        with self._redis.pipeline(transaction=True) as pipe:
            for n in range(_TRANSACTION_ATTEMPTS):
                staged: list[Staged] = []
                try:
                    return attempt(pipe, staged)
                except (WatchError, _Moved):
                    self._unstage(name, staged)
                    pipe.reset()
                    self._redis.ping()
                    time.sleep(min(0.05, 0.001 * n))
                except BaseException:
                    self._unstage(name, staged)
                    raise
        raise StoreUnavailable(f"{what}: too many concurrent writers")

    # -- lifecycle ------------------------------------------------------------------------------------------------
    @_translated
    def ping(self) -> None:
        self._redis.ping()

    def close(self) -> None:
        self._notifier.close()
        self._redis.close()

    # -- models ---------------------------------------------------------------------------------------------------
    @_translated
    def create_model(self, record: ModelRecord) -> None:
        name = record.name
        keys = [f"{self._prefix}:models", self._k(name, "model"), self._k(name, "stream")]
        self._run("create_model", keys, [name, json.dumps(record.to_json()), GROUP, repr(name)])

    @_translated
    def get_model(self, name: str) -> ModelRecord:
        raw = self._redis.get(self._k(name, "model"))
        if raw is None:
            raise NotFound(f"model {name!r} does not exist")
        return ModelRecord.from_json(json.loads(raw))

    @_translated
    def list_models(self) -> list[ModelRecord]:
        names = self._names()
        raws = self._redis.mget([self._k(n, "model") for n in names]) if names else []
        return [ModelRecord.from_json(json.loads(raw)) for raw in raws if raw is not None]

    @_translated
    def delete_model(self, name: str) -> None:
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in self._p(name)) + "*"
        message = json.dumps({"model": name, "version": None})
        self._run(
            "delete_model",
            [f"{self._prefix}:models", self._k(name, "model")],
            [name, pattern, self.channel, message, repr(name)],
        )
        self._part_cache.pop(name, None)

    @_translated
    def update_model(self, name: str, change: Callable[[ModelRecord], ModelRecord]) -> ModelRecord:
        key = self._k(name, "model")

        def attempt(pipe: Pipeline, staged: list[Staged]) -> ModelRecord:
            pipe.watch(key)
            raw = pipe.get(key)
            if raw is None:
                raise NotFound(f"model {name!r} does not exist")
            record = change(ModelRecord.from_json(json.loads(raw)))
            if record.name != name:
                raise ValueError(f"a model's name cannot change ({name!r} → {record.name!r})")
            pipe.multi()
            pipe.set(key, json.dumps(record.to_json()))
            pipe.execute()
            return record

        return self._optimistic(name, f"model {name!r} could not be changed", attempt)

    # -- versions -------------------------------------------------------------------------------------------------
    @_translated
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
        staged = [self._stage(name, weights), self._stage(name, state)]
        (w_mode, w_value), (s_mode, s_value) = staged
        keys = [self._k(name, k) for k in ("model", "fence", "vseq", "versions")]
        keys.append(self._k(name, "op", uuid.uuid4().hex))
        meta = json.dumps(record.to_json())
        args: list[Any] = ["" if fence is None else str(fence), "" if number is None else str(number), meta]
        args += [w_mode, w_value, s_mode, s_value, self._p(name), repr(name), OP_TTL_MS, "1" if record.pinned else "0"]
        try:
            record.version = int(self._run("commit_version", keys, args))
        except BaseException:
            self._unstage(name, staged)
            raise
        return record

    def _version_fields(self, name: str, version: int, *fields: str) -> list[Any]:
        check_version(version, allow_zero=True)
        replies = self._read(name, lambda pipe: pipe.hmget(self._k(name, "v", version), ["meta", *fields]))
        values: list[Any] = replies[0]
        if values[0] is None:
            raise NotFound(f"model {name!r} has no version {version}")
        return values

    @_translated
    def get_version(self, name: str, version: int) -> VersionRecord:
        check_version(version, allow_zero=True)
        [found] = self._records_of(name, [version], self._read)
        if found is None:
            raise NotFound(f"model {name!r} has no version {version}")
        return found

    def _records_of(
        self, name: str, versions: Sequence[int], read: Callable[[str, Callable[[Pipeline], object]], list[Any]]
    ) -> list[VersionRecord | None]:
        """The records of ``versions`` (None for one that is gone), read in one transaction by ``read``."""

        def queue(pipe: Pipeline) -> None:
            for v in versions:
                pipe.hmget(self._k(name, "v", v), ["meta", "pinned"])
                pipe.lrange(self._k(name, "v", v, "promotions"), 0, -1)

        replies = read(name, queue) if versions else []
        out: list[VersionRecord | None] = []
        for i, v in enumerate(versions):
            (meta, pinned), promotions = replies[2 * i], replies[2 * i + 1]
            out.append(None if meta is None else self._version_record(v, meta, promotions, pinned is not None))
        return out

    @staticmethod
    def _version_record(version: int, meta: bytes, promotions: list[bytes], pinned: bool) -> VersionRecord:
        record = VersionRecord.from_json(json.loads(meta))
        record.version = version
        record.promotions = [json.loads(p) for p in promotions]
        record.pinned = pinned  # the flag lives beside the metadata (pinning does not rewrite it)
        return record

    def _unchecked(self, name: str, queue: Callable[[Pipeline], object]) -> list[Any]:
        """Replies of the commands ``queue`` adds, in one transaction (the model's existence checked before)."""
        pipe = self._redis.pipeline(transaction=True)
        queue(pipe)
        replies: list[Any] = pipe.execute()
        return replies

    @_translated
    def list_versions(self, name: str) -> list[VersionRecord]:
        [numbers] = self._read(name, lambda pipe: pipe.zrange(self._k(name, "versions"), 0, -1))
        records = self._records_of(name, [int(n) for n in numbers], self._unchecked)
        return [r for r in records if r is not None]  # None: deleted since the listing

    @_translated
    def versions_page(self, name: str, *, limit: int, before: int | None = None) -> Page[VersionRecord]:
        limit, before = check_page(limit, before)
        top = "+inf" if before is None else f"({before}"
        key = self._k(name, "versions")
        [numbers] = self._read(
            name, lambda pipe: pipe.zrange(key, top, "-inf", desc=True, byscore=True, offset=0, num=limit + 1)
        )
        chosen = [int(n) for n in numbers[:limit]]
        records = self._records_of(name, chosen, self._unchecked)
        return Page([r for r in records if r is not None], chosen[-1] if len(numbers) > limit else None)

    @_translated
    def version_counts(self, name: str) -> VersionCounts:
        def queue(pipe: Pipeline) -> None:
            pipe.zcard(self._k(name, "versions"))
            pipe.zrange(self._k(name, "versions"), -1, -1)

        count, newest = self._read(name, queue)
        return VersionCounts(int(count), int(newest[0]) if newest else None)

    def _version_payload(self, name: str, version: int, field: str) -> bytes:
        for _ in range(10):
            _, inline, ref = self._version_fields(name, version, field, field + "@")
            try:
                data = self._payload(name, inline, ref)
            except _Moved:
                continue  # rewritten meanwhile: read the new reference
            if data is None:
                raise NotFound(f"model {name!r} version {version} has no {field}")
            return data
        raise StoreUnavailable(f"the {field} of {name!r} version {version} kept changing while being read")

    @_translated
    def read_weights(self, name: str, version: int) -> bytes:
        return self._version_payload(name, version, "weights")

    @_translated
    def read_state(self, name: str, version: int) -> bytes:
        return self._version_payload(name, version, "state")

    @_translated
    def rewrite_state(self, name: str, version: int, state: bytes) -> None:
        check_version(version, allow_zero=True)
        self.get_model(name)
        staged = self._stage(name, state)
        try:
            self._run(
                "rewrite_state",
                [self._k(name, "v", version)],
                [staged[0], staged[1], self._p(name), f"model {name!r} has no version {version}"],
            )
        except BaseException:
            self._unstage(name, [staged])
            raise

    @_translated
    def delete_version(self, name: str, version: int) -> None:
        check_version(version, allow_zero=True)
        self.get_model(name)
        keys = [self._k(name, "v", version), self._k(name, "live"), self._k(name, "versions")]
        keys.append(self._k(name, "v", version, "promotions"))
        args = [str(version), self._p(name), f"model {name!r} has no version {version}"]
        args.append(f"version {version} of {name!r} is live; promote another one first")
        self._run("delete_version", keys, args)

    @_translated
    def pin_version(self, name: str, version: int, pinned: bool) -> VersionRecord:
        check_version(version, allow_zero=True)
        self.get_model(name)
        absent = f"model {name!r} has no version {version}"
        self._run("pin_version", [self._k(name, "v", version)], ["1" if pinned else "0", absent])
        return self.get_version(name, version)

    @_translated
    def prune_version(self, name: str, version: int, *, promotions: int) -> bool:
        check_version(version, allow_zero=True)
        keys = [self._k(name, "v", version), self._k(name, "live"), self._k(name, "versions")]
        keys.append(self._k(name, "v", version, "promotions"))
        return bool(self._run("prune_version", keys, [str(version), self._p(name), str(int(promotions))]))

    # -- the live pointer -----------------------------------------------------------------------------------------
    @_translated
    def live_version(self, name: str) -> int | None:
        [value] = self._read(name, lambda pipe: pipe.get(self._k(name, "live")))
        return None if value is None else int(value)

    @_translated
    def live_pointer(self, name: str) -> LivePointer:
        def queue(pipe: Pipeline) -> None:
            pipe.get(self._k(name, "live"))
            pipe.get(self._k(name, "promotion"))

        value, record = self._read(name, queue)
        text = None if record is None else record.decode(errors="replace")  # garbage stays garbage: refused
        return LivePointer(None if value is None else int(value), text)

    @_translated
    def promote(self, name: str, version: int, *, by: str | None, expected: int | None = UNSET) -> bool:
        check_version(version, allow_zero=True)
        wanted = "" if expected is UNSET else ("null" if expected is None else str(int(expected)))
        version = int(version)
        weights = self.read_weights(name, version) if self._signer is not None else b""
        for _ in range(_TRANSACTION_ATTEMPTS):
            keys = [self._k(name, "model"), self._k(name, "live"), self._k(name, "v", version)]
            keys += [self._k(name, "v", version, "promotions"), self._k(name, "op", uuid.uuid4().hex)]
            keys.append(self._k(name, "promotion"))
            signed, previous = "", b""
            if self._signer is not None:
                raw: bytes | None = self._redis.get(self._k(name, "promotion"))  # type: ignore[assignment]
                previous = b"" if raw is None else raw  # compared byte for byte by the script
                signed = sign_promotion(self._signer, name, version, weights, raw).to_json()
            args = [wanted, str(version), json.dumps(by), repr(time.time()), self.channel, json.dumps(name)]
            result = int(self._run("promote", keys, [*args, repr(name), OP_TTL_MS, signed, previous]))
            if result != 2:
                return bool(result)
        raise StoreUnavailable(f"{name!r} could not be promoted: its promotion record kept changing")

    @_translated
    def subscribe(self, listener: LiveListener) -> Subscription:
        return self._notifier.add(listener)

    def _pointers(self) -> dict[str, int | None]:
        """Every model's live pointer now (delivered to listeners after a reconnect, in case messages were missed)."""
        names = self._names()
        values = self._redis.mget([self._k(n, "live") for n in names]) if names else []
        return {n: None if v is None else int(v) for n, v in zip(names, values, strict=True)}

    # -- samples --------------------------------------------------------------------------------------------------
    def _batch_fields(self, name: str, inputs: Tensor, held: Sequence[bool], staged: list[Staged]) -> dict[Any, Any]:
        """The payload fields of a batch: training rows and held-out rows apart (staged when large, each staged
        payload added to ``staged`` at once so that a failure cleans it up)."""
        fields: dict[Any, Any] = {}
        for field, flag in (("train", False), ("held", True)):
            rows = [i for i, h in enumerate(held) if h == flag]
            if rows:
                mode, value = self._stage(name, tensors.dumps({"inputs": inputs[rows]}))
                staged.append((mode, value))
                fields[field if mode == "i" else field + "@"] = value
        return fields

    def _persist(self, pipe: Pipeline, name: str, staged: list[Staged]) -> None:
        for mode, value in staged:
            if mode == "c":
                for key in self._chunk_keys(name, value):
                    pipe.persist(key)

    @_translated
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
        labels = list(labels)
        k = functools.partial(self._k, name)

        def attempt(pipe: Pipeline, staged: list[Staged]) -> tuple[list[str], list[bool]]:
            pipe.watch(*(k(key) for key in _BATCH_KEYS))
            if not pipe.exists(k("model")):
                raise NotFound(f"model {name!r} does not exist")
            if request_key is not None:
                known = pipe.hget(k("requests"), request_key)
                meta_raw = pipe.hget(k("b", int(known)), "meta") if known is not None else None
                if meta_raw is not None:
                    first_answer = json.loads(meta_raw)
                    return list(first_answer["original_ids"]), list(first_answer["original_held_out"])
            write, ids, held = self._prepare_batch(
                pipe, name, inputs, labels, holdout_fraction, staged, request_key=request_key, relabel=relabel
            )
            pipe.multi()
            write(pipe)
            pipe.execute()
            return ids, held

        return self._optimistic(name, f"samples of {name!r} could not be stored", attempt)

    def _prepare_batch(
        self,
        pipe: Pipeline,
        name: str,
        inputs: Tensor,
        labels: list[str | None],
        holdout_fraction: float,
        staged: list[Staged],
        *,
        request_key: str | None = None,
        relabel: bool = False,
        ids: Sequence[str] | None = None,
    ) -> tuple[Callable[[Pipeline], None], list[str], list[bool]]:
        """Read what the next batch needs (``pipe`` watching `_BATCH_KEYS`) and return the function that queues its
        writes after ``pipe.multi()``, with its ids (new ones, or ``ids`` already taken: feedback on captures keeps
        the capture's id) and held-out flags."""
        k = functools.partial(self._k, name)
        counts = {_text(c): int(n) for c, n in pipe.hgetall(k("classes")).items()}
        before = dict(counts)
        held = holdout_flags(labels, counts, holdout_fraction)
        seq = int(pipe.get(k("bseq")) or 0) + 1
        first = int(pipe.get(k("sseq")) or 0) + 1
        new_ids = ids is None
        ids = [str(first + i) for i in range(len(labels))] if ids is None else list(ids)
        meta = BatchMeta(
            seq,
            labels,
            held,
            ids,
            at=time.time(),
            request_key=request_key,
            original_ids=ids if request_key is not None else None,  # the answer to repeat on a retry
            original_held_out=held if request_key is not None else None,
            relabel=relabel,
        )
        fields = self._batch_fields(name, inputs, held, staged)
        tally = _Tally.read(pipe.get(k("tally")), pipe.get(k("sgen")), seq - 1)
        changed: dict[Any, Any] = {c: n for c, n in counts.items() if before.get(c) != n}

        def write(pipe: Pipeline) -> None:
            if tally is not None:  # a current tally plus this batch; a stale one is counted again when read
                pipe.set(k("tally"), _Tally(tally.basis, seq, tally.counts.plus(labels, held)).to_raw())
            if changed:
                pipe.hset(k("classes"), mapping=changed)
            pipe.set(k("bseq"), seq)
            if new_ids:
                pipe.set(k("sseq"), first + len(labels) - 1)
            pipe.hset(k("b", seq), mapping={"meta": json.dumps(meta.to_json()), **fields})
            self._persist(pipe, name, staged)
            pipe.zadd(k("batches"), {str(seq): seq})
            pipe.xadd(k("stream"), {"seq": seq}, id=f"{seq}-0")
            if request_key is not None:
                pipe.hset(k("requests"), request_key, seq)

        return write, ids, held

    def _batch(self, name: str, seq: int, data: dict[Any, Any], shape: Sequence[int]) -> _Batch:
        """A batch from its hash (HGETALL); raises _Moved if a chunked payload changed meanwhile."""
        meta = BatchMeta.from_json(seq, json.loads(data[b"meta"]))
        parts = {}
        for field, flag in (("train", False), ("held", True)):
            rows = [i for i, h in enumerate(meta.held_out) if h == flag]
            payload = self._payload(name, data.get(field.encode()), data.get(f"{field}@".encode()))
            inputs = tensors.loads(payload)["inputs"] if payload is not None else torch.zeros(0, *shape)
            parts[field] = SampleSet(inputs, [meta.labels[i] for i in rows], [meta.ids[i] for i in rows])
        return _Batch(meta, parts["train"], parts["held"])

    def _batches(self, name: str, seqs: Sequence[int], shape: Sequence[int]) -> list[_Batch]:
        """The stored batches among ``seqs``, in order (deleted ones are skipped)."""
        out = []
        for start in range(0, len(seqs), 64):
            group = seqs[start : start + 64]
            pipe = self._redis.pipeline(transaction=False)
            for seq in group:
                pipe.hgetall(self._k(name, "b", seq))
            for seq, data in zip(group, pipe.execute(), strict=True):
                for _ in range(10):
                    if not data:
                        break
                    try:
                        out.append(self._batch(name, seq, data, shape))
                        break
                    except _Moved:
                        data = self._redis.hgetall(self._k(name, "b", seq))
        return out

    def _metas(self, name: str, seqs: Sequence[int]) -> list[BatchMeta]:
        """The metadata of the stored batches among ``seqs``, in order (deleted ones are skipped)."""
        pipe = self._redis.pipeline(transaction=False)
        for seq in seqs:
            pipe.hget(self._k(name, "b", seq), "meta")
        replies = pipe.execute() if seqs else []
        return [
            BatchMeta.from_json(seq, json.loads(raw)) for seq, raw in zip(seqs, replies, strict=True) if raw is not None
        ]

    def _acked(self, name: str) -> int:
        return int(self._redis.get(self._k(name, "acked")) or 0)

    def _stored(self, name: str, low: str = "-inf", high: str = "+inf") -> list[int]:
        found: list[bytes] = self._redis.zrangebyscore(self._k(name, "batches"), low, high)  # type: ignore[assignment]
        return [int(s) for s in found]

    def _pending_entries(self, name: str) -> list[int]:
        """Batch numbers of every unacknowledged stream entry: new ones read through the consumer group, then the
        whole pending list claimed by this consumer (entries a crashed update read but never acknowledged)."""
        stream = self._k(name, "stream")
        while True:
            got: Any = self._redis.xreadgroup(GROUP, self._consumer, {stream: ">"}, count=1000)
            if not got or not got[0][1]:
                break
        seqs: list[int] = []
        cursor: bytes | str = "0-0"
        while True:
            reply = self._redis.xautoclaim(stream, GROUP, self._consumer, min_idle_time=0, start_id=cursor, count=1000)
            cursor, entries = reply[0], reply[1]
            seqs.extend(int(_text(entry_id).split("-")[0]) for entry_id, _ in entries)
            if _text(cursor) == "0-0":
                return sorted(seqs)

    def _set_aside(self, name: str) -> SetAside:
        """Carried samples (id → batch), quarantined ids and exempt ids, read together."""

        def queue(pipe: Pipeline) -> None:
            pipe.hgetall(self._k(name, "carried"))
            pipe.hkeys(self._k(name, "quarantine"))
            pipe.smembers(self._k(name, "exempt"))

        carried, quarantined, exempt = self._read(name, queue)
        return SetAside(
            {_text(i): int(seq) for i, seq in carried.items()},
            frozenset(_text(i) for i in quarantined),
            frozenset(_text(i) for i in exempt),
        )

    @_translated
    def claim(self, name: str, *, limit: int | None = None) -> Claim:
        shape = self.get_model(name).input_shape
        start = self._acked(name)
        entries = self._pending_entries(name)
        stale = [f"{seq}-0" for seq in entries if seq <= start]
        if stale:  # delivered after an acknowledgement already covered them: nothing to train
            self._redis.xack(self._k(name, "stream"), GROUP, *stale)
        aside = self._set_aside(name)
        unconsumed = self._metas(name, [seq for seq in entries if seq > start])
        plan = plan_claim(aside, self._metas(name, aside.carried_batches), unconsumed, start, limit)
        return self._planned(name, plan, shape)

    def _planned(self, name: str, plan: ClaimPlan, shape: Sequence[int]) -> Claim:
        """The claim ``plan`` describes, from the stored rows of its batches (a batch planned twice, for its carried
        rows and for its fresh ones, is read once)."""
        seqs = sorted({meta.seq for meta in plan.batches})
        stored = {b.meta.seq: SampleSet.concat([b.train, b.held], shape) for b in self._batches(name, seqs, shape)}
        empty = SampleSet.concat([], shape)
        return plan.claim([stored.get(meta.seq, empty) for meta in plan.batches], shape)

    @_translated
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
        experience = consumed_experience(claim, version, update_id, quarantined, deferred)
        held = consumed_held_out(claim, quarantined, deferred)
        keys = [self._k(name, k) for k in ("model", "fence", "acked", "experiences", "stream", "carried")]
        keys += [self._k(name, "op", uuid.uuid4().hex), self._k(name, "held"), self._k(name, "sgen")]
        args: list[Any] = ["" if fence is None else str(fence), str(claim.token.after), str(claim.token.upto)]
        moves = [
            json.dumps(sorted(experience.claim["consumed"])),
            json.dumps(experience.claim["deferred"] or {"": 0}),  # never an empty object (cjson reads it as a list)
        ]
        args += [json.dumps(experience.to_json()), GROUP, repr(name), OP_TTL_MS, *moves]
        for _ in range(_TRANSACTION_ATTEMPTS):  # again while a deletion changes the held-out store meanwhile
            index = self._held_index(name)
            expected = index.gen
            kept = index.offer(held.labels, held.ids, self.heldout_capacity)
            part, dead = index.fold(experience, [i for i, k in zip(held.ids, kept, strict=True) if k])
            staged: list[Staged] = []
            if part is not None:
                staged.append(self._stage(name, new_part(held, version).select(kept).to_bytes()))
            mode, value = staged[0] if staged else ("", "")
            fold = [
                str(expected),
                json.dumps(index.to_json()),
                part or "",
                mode,
                value,
                json.dumps(dead),
                self._p(name),
            ]
            try:
                result = self._run("ack", keys, [*args, *fold])
            except BaseException:
                self._unstage(name, staged)
                raise
            if _text(result) != "RETRY":
                break
            self._unstage(name, staged)
        else:
            raise StoreUnavailable(f"the held-out store of {name!r} kept changing while an update was acknowledged")
        self._forget_idle_consumers(name)
        self._compact(name, experience, set(held.ids))
        if index.crowded:
            self._consolidate(name)
        with suppress(StoreError):
            self.pending_counts(name)  # counted again here, not by the next post

    def _compact(self, name: str, experience: ExperienceRecord, moved: set[str]) -> None:
        """Drop from the batches an experience consumed the held-out rows that moved to the held-out store (a batch
        left without rows is removed); pending, deferred and quarantined rows stay where they are."""
        token, _, consumed = experience_parts(experience.claim)
        seqs = sorted({*self._stored(name, f"({token.after}", str(token.upto)), *consumed.values()})
        for meta in self._metas(name, seqs):
            if moved.intersection(meta.ids):
                self._rewrite_batch(name, meta.seq, lambda m: [i not in moved for i in m.ids])

    @_translated
    def quarantine(self, name: str, records: Sequence[QuarantineRecord], *, fence: int | None = None) -> None:
        keys = [self._k(name, k) for k in ("model", "fence", "quarantine", "carried", "sgen")]
        pairs = [value for record in records for value in (record.id, json.dumps(record.to_json()))]
        self._run("quarantine", keys, ["" if fence is None else str(fence), repr(name), *pairs])

    @_translated
    def quarantined(self, name: str) -> list[QuarantineRecord]:
        [raws] = self._read(name, lambda pipe: pipe.hvals(self._k(name, "quarantine")))
        records = [QuarantineRecord.from_json(json.loads(raw)) for raw in raws]
        return sorted(records, key=lambda r: (r.at, int(r.id) if r.id.isdigit() else 0))

    @_translated
    def release_quarantine(self, name: str, ids: Sequence[str]) -> list[str]:
        wanted = check_sample_ids(ids)  # all or nothing: one bad id and nothing is released
        keys = [self._k(name, k) for k in ("model", "quarantine", "carried", "exempt", "sgen")]
        released = self._run("release", keys, [repr(name), *dict.fromkeys(wanted)])
        return [_text(i) for i in released]

    def _forget_idle_consumers(self, name: str) -> None:
        """Remove consumers of other processes that hold nothing pending (they accumulate as workers restart)."""
        with suppress(redis.RedisError):
            stream = self._k(name, "stream")
            for consumer in self._redis.xinfo_consumers(stream, GROUP):
                consumer_name = _text(consumer["name"])
                if consumer["pending"] == 0 and consumer_name != self._consumer:
                    self._redis.xgroup_delconsumer(stream, GROUP, consumer_name)

    @_translated
    def experiences(self, name: str) -> list[ExperienceRecord]:
        [raws] = self._read(name, lambda pipe: pipe.lrange(self._k(name, "experiences"), 0, -1))
        return [ExperienceRecord.from_json(json.loads(raw)) for raw in raws]

    # -- the held-out store (registry.heldout) ---------------------------------------------------------------------
    # P held (HASH): "index" the index JSON, "gen" its generation, "p:<part>" (or "p:<part>@", a chunk reference)
    # each part.  The acknowledgement script writes the experience, the new part and the index together, provided
    # the generation did not change since the index was read (a deletion meanwhile: read it again and retry).
    # An experience committed without being folded in (data written before the held-out store existed) is folded
    # in from its batches by the first call that reads or changes the store.
    def _held_index(self, name: str) -> HeldOutIndex:
        """The index, every committed experience folded in."""
        k = functools.partial(self._k, name)

        def queue(pipe: Pipeline) -> None:
            pipe.hmget(k("held"), ["index", "gen"])
            pipe.lindex(k("experiences"), -1)

        [(raw, gen), newest] = self._read(name, queue)
        index = _index(raw, gen)
        if newest is not None:
            last = ExperienceRecord.from_json(json.loads(newest))
            if index.last != (last.version, last.at):
                index = self._held_catch_up(name)
        return index

    def _held_catch_up(self, name: str) -> HeldOutIndex:
        k = functools.partial(self._k, name)
        shape = self.get_model(name).input_shape
        from_batches: list[ExperienceRecord] = []

        def attempt(pipe: Pipeline, staged: list[Staged]) -> HeldOutIndex:
            pipe.watch(k("held"), k("experiences"))
            raw, gen = pipe.hmget(k("held"), ["index", "gen"])
            index = _index(raw, gen)
            experiences = [ExperienceRecord.from_json(json.loads(r)) for r in pipe.lrange(k("experiences"), 0, -1)]
            todo = [experiences[p] for p in index.pending(experiences)]
            if not todo:
                return index
            parts: dict[str, Part] = {}
            for experience in todo:
                held = self._held_in_batches(name, experience, shape)
                kept = index.offer(held.labels, held.ids, self.heldout_capacity)
                part, _ = index.fold(experience, [i for i, k_ in zip(held.ids, kept, strict=True) if k_])
                if part is not None:
                    parts[part] = new_part(held, experience.version).select(kept)
            fields: dict[Any, Any] = {"index": json.dumps(index.to_json()), "gen": index.gen}
            for part, rows in parts.items():
                if part in index.parts:
                    mode, value = self._stage(name, rows.to_bytes())
                    staged.append((mode, value))
                    fields[f"p:{part}" if mode == "i" else f"p:{part}@"] = value
            dead = [
                f for p in _part_names(pipe.hkeys(k("held"))) if p not in index.parts for f in (f"p:{p}", f"p:{p}@")
            ]
            pipe.multi()
            if dead:
                pipe.hdel(k("held"), *dead)
            pipe.hset(k("held"), mapping=fields)
            self._persist(pipe, name, staged)
            pipe.execute()
            from_batches.extend(todo)
            return index

        index = self._optimistic(name, f"the held-out store of {name!r} could not be built", attempt)
        if from_batches:  # the rows moved: drop them from the consumed batches, as an acknowledgement does now
            keep = self._set_aside(name).kept_by_retention
            for meta in self._metas(name, self._stored(name, "-inf", str(self._acked(name)))):
                if any(h and i not in keep for i, h in zip(meta.ids, meta.held_out, strict=True)):
                    self._rewrite_batch(
                        name, meta.seq, lambda m: [not h or i in keep for i, h in zip(m.ids, m.held_out, strict=True)]
                    )
        return index

    def _held_in_batches(self, name: str, experience: ExperienceRecord, shape: Sequence[int]) -> SampleSet:
        """An experience's held-out rows as they were kept before the held-out store: inside its batches."""
        seqs = experience_batches(experience.claim, self._stored(name))
        parts = []
        for batch in self._batches(name, seqs, shape):
            mask = dict(zip(batch.meta.ids, experience_mask(experience.claim, batch.meta), strict=True))
            parts.append(batch.held.select([mask[i] for i in batch.held.ids]))
        return SampleSet.concat(parts, shape)

    def _held_parts(self, name: str, data: dict[Any, Any]) -> dict[str, Part]:
        """The parts in a HGETALL of P held (raises _Moved when a chunked one changed meanwhile)."""
        parts = {}
        for part in _part_names(data):
            payload = self._payload(name, data.get(f"p:{part}".encode()), data.get(f"p:{part}@".encode()))
            if payload is not None:
                parts[part] = Part.from_bytes(payload)
        return parts

    def _held_store(self, name: str) -> tuple[HeldOutIndex, dict[str, Part]]:
        """The index and the parts it lists: the index first, then only the parts this process has not fetched
        before (an update adds one part, so it transfers that part, not the whole store), read again when the
        index changed in between."""
        key = self._k(name, "held")
        index = self._held_index(name)  # folds in what is not folded yet; read again only if it changes meanwhile
        for attempt in range(10):
            if attempt:
                [(raw, gen)] = self._read(name, lambda pipe: pipe.hmget(key, ["index", "gen"]))
                index = _index(raw, gen)
            cached = self._part_cache.get(name, {})
            wanted = {p: (index.seed, tuple(ids)) for p, ids in index.parts.items()}
            missing = [p for p in wanted if p not in cached or cached[p][0] != wanted[p]]
            fields = ["gen", *(f for p in missing for f in (f"p:{p}", f"p:{p}@"))]
            [values] = self._read(name, functools.partial(_hmget, key=key, fields=fields))
            if int(values[0] or 0) != index.gen:
                continue  # changed between the two reads
            try:
                fetched = {p: self._payload(name, values[1 + 2 * i], values[2 + 2 * i]) for i, p in enumerate(missing)}
            except _Moved:
                continue
            fresh = {p: cached[p] for p in wanted if p not in fetched}
            fresh.update({p: (wanted[p], Part.from_bytes(b)) for p, b in fetched.items() if b is not None})
            self._part_cache[name] = fresh  # only the listed parts: the cache is as bounded as the store
            return index, {p: part for p, (_, part) in fresh.items()}
        raise StoreUnavailable(f"the held-out store of {name!r} kept changing while being read")

    @_translated
    def held_out_rows(self, name: str) -> HeldOut:
        shape = self.get_model(name).input_shape
        index, parts = self._held_store(name)
        return grouped(index, parts, shape)

    @_translated
    def experience_samples(self, name: str, version: int) -> SampleSet:
        found = self.held_out_rows(name).experience(version)
        return found if found is not None else empty(self.get_model(name).input_shape)

    def _rewrite_held(self, name: str, change: Callable[[HeldOutIndex, dict[str, Part]], dict[str, Part]]) -> None:
        """Change the held-out store in one transaction: ``change`` edits the index and returns the parts to write
        (parts the index no longer lists are removed)."""
        key = self._k(name, "held")

        def attempt(pipe: Pipeline, staged: list[Staged]) -> None:
            pipe.watch(key)
            data = pipe.hgetall(key)
            index = _index(data.get(b"index"), data.get(b"gen"))
            before = self._held_parts(name, data)
            gen = index.gen
            written = change(index, before)
            if index.gen == gen:
                return
            fields: dict[Any, Any] = {"index": json.dumps(index.to_json()), "gen": index.gen}
            drop = [f"p:{p}" for p in before if p not in index.parts or p in written]
            drop += [f"p:{p}@" for p in before if p not in index.parts or p in written]
            old_chunks = [c for p in drop if p.endswith("@") for c in self._chunk_keys(name, data.get(p.encode()))]
            for part, rows in written.items():
                mode, value = self._stage(name, rows.to_bytes())
                staged.append((mode, value))
                fields[f"p:{part}" if mode == "i" else f"p:{part}@"] = value
            pipe.multi()
            if drop:
                pipe.hdel(key, *drop)
            pipe.hset(key, mapping=fields)
            self._persist(pipe, name, staged)
            if old_chunks:
                pipe.unlink(*old_chunks)
            pipe.execute()

        self._optimistic(name, f"the held-out store of {name!r} could not be changed", attempt)

    def _consolidate(self, name: str) -> None:
        shape = self.get_model(name).input_shape

        def change(index: HeldOutIndex, parts: dict[str, Part]) -> dict[str, Part]:
            if not index.crowded:
                return {}
            part, merged, _ = consolidate(index, parts, shape)
            return {part: merged} if len(merged.samples) else {}

        self._rewrite_held(name, change)

    def _forget_held(self, name: str, wanted: set[str]) -> set[str]:
        found: set[str] = set()

        def change(index: HeldOutIndex, parts: dict[str, Part]) -> dict[str, Part]:
            found.clear()
            written = {}
            for part, rows in parts.items():
                hit = wanted.intersection(rows.samples.ids)
                if hit:
                    found.update(hit)
                    written[part] = rows.without(hit)
            index.remove(wanted)
            index.drop_dead_parts()
            if found:
                index.gen += 1
            return {p: rows for p, rows in written.items() if p in index.parts and len(rows.samples)}

        self._held_index(name)
        self._rewrite_held(name, change)
        return found

    def _rewrite_batch(
        self, name: str, seq: int, keep_of: Callable[[BatchMeta], list[bool]]
    ) -> tuple[list[bool], BatchMeta] | None:
        """Keep only some rows of a batch (removing it, its stream entry and its request key when none remain).
        Returns the mask applied and the metadata it was computed from (None if the batch is gone)."""
        key, shape = self._k(name, "b", seq), self.get_model(name).input_shape

        def attempt(pipe: Pipeline, staged: list[Staged]) -> tuple[list[bool], BatchMeta] | None:
            pipe.watch(key)
            data = pipe.hgetall(key)
            if not data:
                return None
            batch = self._batch(name, seq, data, shape)
            keep = keep_of(batch.meta)
            if all(keep):
                return keep, batch.meta
            old_chunks = [c for f in (b"train@", b"held@") for c in self._chunk_keys(name, data.get(f))]
            pipe.multi()
            pipe.delete(key)
            if any(keep):
                meta = batch.meta.select(keep)
                fields = self._batch_fields(name, _merge_rows(batch, keep), meta.held_out, staged)
                pipe.hset(key, mapping={"meta": json.dumps(meta.to_json()), **fields})
                self._persist(pipe, name, staged)
            else:
                pipe.zrem(self._k(name, "batches"), str(seq))
                pipe.xack(self._k(name, "stream"), GROUP, f"{seq}-0")
                pipe.xdel(self._k(name, "stream"), f"{seq}-0")
                if batch.meta.request_key:
                    pipe.hdel(self._k(name, "requests"), batch.meta.request_key)
            if old_chunks:
                pipe.unlink(*old_chunks)
            pipe.execute()
            return keep, batch.meta

        return self._optimistic(name, f"batch {seq} of {name!r} could not be rewritten", attempt)

    @_translated
    def delete_samples(self, name: str, ids: Sequence[str]) -> int:
        wanted = set(check_sample_ids(ids))  # all or nothing: one bad id and nothing is deleted
        if wanted:
            self._run("sadd", [self._k(name, "model"), self._k(name, "deleted")], [repr(name), *sorted(wanted)])
        else:
            self.get_model(name)
        found: set[str] = set()
        for meta in self._metas(name, self._stored(name)):
            hit = wanted.intersection(meta.ids)
            if hit and self._rewrite_batch(name, meta.seq, lambda m: [i not in wanted for i in m.ids]) is not None:
                found |= hit
        if wanted:
            found |= self._forget_held(name, wanted)
            found |= set(
                self._change_captures(
                    name, lambda index: index.remove(wanted), f"the captures of {name!r} could not be changed"
                )
            )
            pipe = self._redis.pipeline(transaction=True)
            pipe.hdel(self._k(name, "quarantine"), *wanted)
            pipe.hdel(self._k(name, "carried"), *wanted)
            pipe.srem(self._k(name, "exempt"), *wanted)
            pipe.incr(self._k(name, "sgen"))  # what is pending changed: the tally is counted again
            pipe.execute()
        return len(found)

    @_translated
    def deleted_ids(self, name: str) -> set[int]:
        [members] = self._read(name, lambda pipe: pipe.smembers(self._k(name, "deleted")))
        return tombstones(name, members)[0]

    @_translated
    def repair_deleted_ids(self, name: str) -> int:
        [members] = self._read(name, lambda pipe: pipe.smembers(self._k(name, "deleted")))
        _, invalid = tombstones(name, members)
        if invalid:  # removing members is idempotent and never loses a valid id: no transaction needed
            self._redis.srem(self._k(name, "deleted"), *[m for m in members if m in invalid])
            log.warning("repaired the deletion record of model %r: dropped %d invalid id(s)", name, len(invalid))
        return len(invalid)

    @_translated
    def apply_retention(
        self, name: str, *, max_age_s: float | None, max_samples: int | None, protect: Collection[str] = ()
    ) -> dict[str, int]:
        self._held_index(name)  # every experience's held-out rows are in the held-out store before this
        aside = self._set_aside(name)
        retention = RetentionPass(time.time(), max_age_s, max_samples, frozenset(protect) | aside.kept_by_retention)
        for seq in reversed(self._stored(name, "-inf", str(self._acked(name)))):  # newest first; pending ones stay
            result = self._rewrite_batch(name, seq, retention.mask)
            if result is not None:
                retention.record(result[1], result[0])
        return retention.dropped

    @_translated
    def add_experience(self, name: str, version: int, held_out: SampleSet, update_id: str | None) -> None:
        k = functools.partial(self._k, name)
        self._held_index(name)

        def attempt(pipe: Pipeline, staged: list[Staged]) -> None:
            pipe.watch(k("model"), k("acked"), k("sseq"), k("batches"), k("held"), k("experiences"))
            if not pipe.exists(k("model")):
                raise NotFound(f"model {name!r} does not exist")
            start = int(pipe.get(k("acked")) or 0)
            if pipe.zrangebyscore(k("batches"), f"({start}", "+inf", start=0, num=1):
                raise Conflict(f"model {name!r} has pending samples; import experiences before pending samples")
            raw, gen = pipe.hmget(k("held"), ["index", "gen"])
            index = _index(raw, gen)
            first = int(pipe.get(k("sseq")) or 0) + 1
            ids = [str(first + i) for i in range(len(held_out))]
            samples = SampleSet(held_out.inputs, list(held_out.labels), ids)
            experience = ExperienceRecord(version, update_id, ClaimToken(start, start).to_json(), held_out=len(ids))
            kept = index.offer(samples.labels, ids, self.heldout_capacity)
            part, dead = index.fold(experience, [i for i, k_ in zip(ids, kept, strict=True) if k_])
            fields: dict[Any, Any] = {"index": json.dumps(index.to_json()), "gen": index.gen}
            if part is not None:
                mode, value = self._stage(name, new_part(samples, version).select(kept).to_bytes())
                staged.append((mode, value))
                fields[f"p:{part}" if mode == "i" else f"p:{part}@"] = value
            pipe.multi()
            if ids:
                pipe.set(k("sseq"), first + len(ids) - 1)
            if dead:
                pipe.hdel(k("held"), *[f for p in dead for f in (f"p:{p}", f"p:{p}@")])
            pipe.hset(k("held"), mapping=fields)
            self._persist(pipe, name, staged)
            pipe.rpush(k("experiences"), json.dumps(experience.to_json()))
            pipe.execute()

        self._optimistic(name, f"the experience of {name!r} could not be stored", attempt)

    def _count_pending(self, name: str) -> PendingCounts:
        aside = self._set_aside(name)
        unconsumed = self._metas(name, self._stored(name, f"({self._acked(name)}", "+inf"))
        return tally_pending(aside.pending(self._metas(name, aside.carried_batches), unconsumed))

    @_translated
    def pending_counts(self, name: str) -> PendingCounts:
        k = functools.partial(self._k, name)

        def queue(pipe: Pipeline) -> None:
            pipe.get(k("tally"))
            pipe.get(k("sgen"))
            pipe.get(k("bseq"))

        raw, sgen, bseq = self._read(name, queue)
        tally = _Tally.read(raw, sgen, int(bseq or 0))
        if tally is not None:
            return tally.counts

        def attempt(pipe: Pipeline, staged: list[Staged]) -> PendingCounts:
            pipe.watch(k("sgen"), k("bseq"), k("model"))
            basis, upto = int(pipe.get(k("sgen")) or 0), int(pipe.get(k("bseq")) or 0)
            counts = self._count_pending(name)  # any change meanwhile changes sgen or bseq: this one then fails
            pipe.multi()
            pipe.set(k("tally"), _Tally(basis, upto, counts).to_raw())
            pipe.execute()
            return counts

        return self._optimistic(name, f"the pending samples of {name!r} could not be counted", attempt)

    # -- captured prediction traffic (registry.captures) ------------------------------------------------------------
    # P capture holds the index (and its gen), P caprows one field per stored capture: id → its input.
    def _capture_read(self, pipe: Pipeline, name: str) -> CaptureIndex:
        raw = pipe.hget(self._k(name, "capture"), "index")
        return CaptureIndex() if raw is None else CaptureIndex.from_json(json.loads(raw))

    def _capture_write(self, pipe: Pipeline, name: str, index: CaptureIndex, drop: Sequence[str] = ()) -> None:
        pipe.hset(self._k(name, "capture"), mapping={"index": json.dumps(index.to_json()), "gen": index.gen})
        if drop:
            pipe.hdel(self._k(name, "caprows"), *drop)

    def _capture_rows(self, name: str, ids: Sequence[str], shape: Sequence[int]) -> dict[str, Tensor]:
        rows: dict[str, Tensor] = {}
        for start in range(0, len(ids), 256):  # bounded replies
            group = list(ids[start : start + 256])
            got: list[bytes | None] = self._redis.hmget(self._k(name, "caprows"), group)  # type: ignore[assignment]
            for sample_id, data in zip(group, got, strict=True):
                row = None if data is None else row_tensor(data, shape)
                if row is not None:
                    rows[sample_id] = row
        return rows

    def _change_captures(self, name: str, change: Callable[[CaptureIndex], list[str]], what: str) -> list[str]:
        """Change the capture index in one transaction; ``change`` edits it and returns the ids whose rows go."""

        def attempt(pipe: Pipeline, staged: list[Staged]) -> list[str]:
            pipe.watch(self._k(name, "model"), self._k(name, "capture"))
            if not pipe.exists(self._k(name, "model")):
                raise NotFound(f"model {name!r} does not exist")
            index = self._capture_read(pipe, name)
            gen = index.gen
            dropped = change(index)
            if index.gen == gen:
                return dropped
            pipe.multi()
            self._capture_write(pipe, name, index, dropped)
            pipe.execute()
            return dropped

        return self._optimistic(name, what, attempt)

    @_translated
    def reserve_ids(self, name: str, count: int) -> int:
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_RESERVE:
            raise ValueError(f"reserve 1 to {MAX_RESERVE} ids at a time, not {count!r}")
        k = functools.partial(self._k, name)

        def attempt(pipe: Pipeline, staged: list[Staged]) -> int:
            pipe.watch(k("model"))
            if not pipe.exists(k("model")):
                raise NotFound(f"model {name!r} does not exist")
            pipe.multi()
            pipe.incrby(k("sseq"), count)
            [last] = pipe.execute()
            return int(last) - count + 1

        return self._optimistic(name, f"sample ids of {name!r} could not be reserved", attempt)

    @_translated
    def add_captures(self, name: str, inputs: Tensor, ids: Sequence[str], capacity: int) -> list[str]:
        ids = check_sample_ids(ids)
        if len(ids) != len(inputs):
            raise ValueError(f"{len(inputs)} captured inputs with {len(ids)} ids")
        k = functools.partial(self._k, name)
        rows = dict(zip(ids, inputs, strict=True))

        def attempt(pipe: Pipeline, staged: list[Staged]) -> list[str]:
            pipe.watch(k("model"), k("capture"), k("deleted"))
            if not pipe.exists(k("model")):
                raise NotFound(f"model {name!r} does not exist")
            index = self._capture_read(pipe, name)
            check = self._redis.pipeline(transaction=False)  # WATCH on "deleted" guards these reads
            for sample_id in ids:
                check.sismember(k("deleted"), sample_id)
            alive = [i for i, dead in zip(ids, check.execute(), strict=True) if not dead]
            stored, evicted = index.offer(alive, time.time(), capacity)
            pipe.multi()
            self._capture_write(pipe, name, index, evicted)
            if stored:
                pipe.hset(k("caprows"), mapping={i: row_bytes(rows[i]) for i in stored})
            pipe.execute()
            return stored

        return self._optimistic(name, f"captures of {name!r} could not be stored", attempt)

    @_translated
    def claim_captures(self, name: str) -> CaptureClaim:
        shape = self.get_model(name).input_shape
        [raw] = self._read(name, lambda pipe: pipe.hget(self._k(name, "capture"), "index"))
        index = CaptureIndex() if raw is None else CaptureIndex.from_json(json.loads(raw))
        pending = index.pending
        rows = self._capture_rows(name, [s.id for s in pending], shape)
        lost = {s.id for s in pending if s.id not in rows}
        if lost:  # evicted meanwhile, or unreadable: not part of this claim (an unreadable row is dropped)
            self._change_captures(name, lambda i: i.remove(lost), f"the captures of {name!r} could not be changed")
        return CaptureClaim(gather(pending, rows, shape), index.next_seq - 1)

    @_translated
    def ack_captures(self, name: str, claim: CaptureClaim, *, fence: int | None = None) -> None:
        k = functools.partial(self._k, name)

        def attempt(pipe: Pipeline, staged: list[Staged]) -> None:
            pipe.watch(k("model"), k("capture"), k("fence"))
            if not pipe.exists(k("model")):
                raise NotFound(f"model {name!r} does not exist")
            if fence is not None and _text(pipe.get(k("fence")) or b"") != str(fence):
                raise Conflict(f"update lock of {name!r} was lost (fencing token {fence} is stale)")
            index = self._capture_read(pipe, name)
            index.consume(claim.upto)
            pipe.multi()
            self._capture_write(pipe, name, index)
            pipe.execute()

        self._optimistic(name, f"the captures of {name!r} could not be acknowledged", attempt)

    @_translated
    def label_captures(self, name: str, items: Sequence[tuple[str, str]], holdout_fraction: float) -> FeedbackResult:
        ids = check_sample_ids([i for i, _ in items])
        if len(set(ids)) != len(ids):
            raise ValueError("feedback names an id more than once")
        labels = {i: label for i, (_, label) in zip(ids, items, strict=True)}
        shape = self.get_model(name).input_shape
        k = functools.partial(self._k, name)

        def attempt(pipe: Pipeline, staged: list[Staged]) -> FeedbackResult:
            pipe.watch(*(k(key) for key in _BATCH_KEYS), k("capture"), k("caprows"))
            if not pipe.exists(k("model")):
                raise NotFound(f"model {name!r} does not exist")
            index = self._capture_read(pipe, name)
            stored = index.ids
            rows = self._capture_rows(name, [i for i in ids if i in stored], shape)
            lost = [i for i in ids if i in stored and i not in rows]
            index.remove(lost)
            status = index.take(ids)
            accepted = [i for i in ids if status[i] == "accepted"]
            write = None
            held: list[bool] = []
            if accepted:
                inputs = torch.stack([rows[i] for i in accepted])
                write, _, held = self._prepare_batch(
                    pipe, name, inputs, [labels[i] for i in accepted], holdout_fraction, staged, ids=accepted
                )
            pipe.multi()
            if accepted or lost:
                self._capture_write(pipe, name, index, [*accepted, *lost])
            if write is not None:
                write(pipe)
            pipe.execute()
            return FeedbackResult(status, dict(zip(accepted, held, strict=True)), {i: labels[i] for i in accepted})

        return self._optimistic(name, f"feedback for {name!r} could not be stored", attempt)

    @_translated
    def trim_captures(self, name: str, capacity: int, *, max_age_s: float | None = None) -> int:
        dropped = self._change_captures(
            name,
            lambda index: index.trim(capacity, max_age_s=max_age_s),
            f"the captures of {name!r} could not be trimmed",
        )
        return len(dropped)

    @_translated
    def capture_counts(self, name: str) -> CaptureCounts:
        [raw] = self._read(name, lambda pipe: pipe.hget(self._k(name, "capture"), "index"))
        return (CaptureIndex() if raw is None else CaptureIndex.from_json(json.loads(raw))).counts()

    # -- updates --------------------------------------------------------------------------------------------------
    def _update_keys(self, name: str) -> list[str]:
        return [self._k(name, k) for k in ("model", "updates", "useq", "uorder", "active")]

    def _indexed_updates(self, name: str) -> None:
        """Build the order and active indexes of a store written before they existed (once per process and model:
        a model whose records are all in the order needs nothing)."""
        if name in self._update_indexed:
            return
        k = functools.partial(self._k, name)

        def attempt(pipe: Pipeline, staged: list[Staged]) -> None:
            pipe.watch(k("updates"), k("uorder"), k("active"), k("useq"))
            if pipe.hlen(k("updates")) == pipe.zcard(k("uorder")):
                return
            raws = pipe.hgetall(k("updates"))
            records = sorted(
                (UpdateRecord.from_json(json.loads(raw)) for raw in raws.values()),
                key=lambda r: (r.created_at, r.update_id),
            )
            pipe.multi()
            pipe.delete(k("uorder"), k("active"))
            for seq, record in enumerate(records, 1):
                pipe.zadd(k("uorder"), {record.update_id: seq})
                if not record.finished:
                    pipe.zadd(k("active"), {record.update_id: seq})
            pipe.set(k("useq"), len(records))
            pipe.execute()

        self._optimistic(name, f"the update index of {name!r} could not be built", attempt)
        self._update_indexed.add(name)

    @_translated
    def put_update(self, record: UpdateRecord) -> None:
        check_update_id(record.update_id)
        self._indexed_updates(record.model)
        args = [record.update_id, json.dumps(record.to_json()), repr(record.model), "0" if record.finished else "1"]
        self._run("put_update", self._update_keys(record.model), args)

    @_translated
    def create_update(
        self, record: UpdateRecord, *, max_queued: int | None = None, join_queued: bool = False
    ) -> UpdateRecord:
        if max_queued is not None and max_queued < 1:
            raise ValueError(f"max_queued must be at least 1, got {max_queued}")
        check_update_id(record.update_id)
        name = record.model
        self._indexed_updates(name)
        args = [record.update_id, json.dumps(record.to_json()), repr(name), "" if max_queued is None else max_queued]
        kind, value = self._run("create_update", self._update_keys(name), [*args, "1" if join_queued else "0"])
        if _text(kind) == "full":
            raise QueueFull(name, int(value), int(max_queued or 0))
        return UpdateRecord.from_json(json.loads(value))

    @_translated
    def get_update(self, name: str, update_id: str) -> UpdateRecord:
        check_update_id(update_id)
        [raw] = self._read(name, lambda pipe: pipe.hget(self._k(name, "updates"), update_id))
        if raw is None:
            raise NotFound(f"model {name!r} has no update {update_id!r}")
        return UpdateRecord.from_json(json.loads(raw))

    @_translated
    def list_updates(self, name: str) -> list[UpdateRecord]:
        [raws] = self._read(name, lambda pipe: pipe.hvals(self._k(name, "updates")))
        records = [UpdateRecord.from_json(json.loads(raw)) for raw in raws]
        return sorted(records, key=lambda r: (r.created_at, r.update_id))

    def _update_records(self, name: str, ids: Sequence[bytes | str]) -> list[UpdateRecord]:
        raws = self._redis.hmget(self._k(name, "updates"), list(ids)) if ids else []
        return [UpdateRecord.from_json(json.loads(raw)) for raw in raws if raw is not None]

    @_translated
    def updates_page(self, name: str, *, limit: int, before: int | None = None) -> Page[UpdateRecord]:
        limit, before = check_page(limit, before)
        self._indexed_updates(name)
        top = "+inf" if before is None else f"({before}"
        key, updates = self._k(name, "uorder"), self._k(name, "updates")

        def queue(pipe: Pipeline) -> None:
            pipe.zrange(key, top, "-inf", desc=True, byscore=True, offset=0, num=limit + 1, withscores=True)

        [entries] = self._read(name, queue)
        chosen = entries[:limit]
        raws = self._redis.hmget(updates, [i for i, _ in chosen]) if chosen else []
        records = [UpdateRecord.from_json(json.loads(raw)) for raw in raws if raw is not None]
        return Page(records, int(chosen[-1][1]) if len(entries) > limit else None)

    @_translated
    def active_updates(self, name: str) -> list[UpdateRecord]:
        self._indexed_updates(name)
        [ids] = self._read(name, lambda pipe: pipe.zrange(self._k(name, "active"), 0, -1))
        records = [r for r in self._update_records(name, ids) if not r.finished]
        return sorted(records, key=lambda r: (r.created_at, r.update_id))

    @_translated
    def trim_updates(self, name: str, keep_finished: int) -> int:
        if keep_finished < 0:
            raise ValueError(f"keep_finished must be at least 0, got {keep_finished}")
        self.get_model(name)
        self._indexed_updates(name)
        keys = [self._k(name, k) for k in ("updates", "uorder", "active", "cancel")]
        return int(self._run("trim_updates", keys, [keep_finished]))

    @_translated
    def request_cancel(self, name: str, update_id: str) -> None:
        check_update_id(update_id)
        keys = [self._k(name, "model"), self._k(name, "updates"), self._k(name, "cancel")]
        self._run("request_cancel", keys, [update_id, repr(name), repr(update_id)])

    @_translated
    def cancel_requested(self, name: str, update_id: str) -> bool:
        check_update_id(update_id)
        [member] = self._read(name, lambda pipe: pipe.sismember(self._k(name, "cancel"), update_id))
        return bool(member)

    # -- idempotent answers ----------------------------------------------------------------------------------------
    def _answer_key(self, name: str, key: str) -> str:
        return self._k(name, "answer", hashlib.sha256(key.encode()).hexdigest())

    @_translated
    def remember(self, name: str, key: str, value: dict[str, Any], ttl_s: float) -> None:
        keys = [self._k(name, "model"), self._answer_key(name, key)]
        self._run("set", keys, [json.dumps(value), _ms(ttl_s), repr(name)])

    @_translated
    def recall(self, name: str, key: str) -> dict[str, Any] | None:
        [raw] = self._read(name, lambda pipe: pipe.get(self._answer_key(name, key)))
        value: dict[str, Any] | None = None if raw is None else json.loads(raw)
        return value

    # -- the per-model update lock --------------------------------------------------------------------------------
    @_translated
    def acquire_update_lock(self, name: str, owner: str, ttl_s: float) -> int | None:
        keys = [self._k(name, "model"), self._k(name, "lock"), self._k(name, "fence"), f"{self._prefix}:fence"]
        token = self._run("acquire_lock", keys, [_ms(ttl_s), owner, repr(name)])
        return None if token is None else int(token)

    @_translated
    def refresh_update_lock(self, name: str, token: int, ttl_s: float) -> bool:
        return bool(self._run("refresh_lock", [self._k(name, "lock")], [str(token), _ms(ttl_s)]))

    @_translated
    def release_update_lock(self, name: str, token: int) -> None:
        self._run("release_lock", [self._k(name, "lock")], [str(token)])

    @_translated
    def update_lock_holder(self, name: str) -> LockHolder | None:
        def queue(pipe: Pipeline) -> None:
            pipe.get(self._k(name, "lock"))
            pipe.pttl(self._k(name, "lock"))

        held, ttl_ms = self._read(name, queue)
        if held is None:  # free or expired (an expired key reads as absent, and a refresh cannot revive it)
            return None
        token, _, owner = _text(held).partition(" ")
        return LockHolder(owner=owner, token=int(token), expires_in_s=max(int(ttl_ms), 0) / 1000)


def _merge_rows(batch: _Batch, keep: Sequence[bool]) -> Tensor:
    """The kept rows of a batch in their original order (training and held-out payloads interleaved back)."""
    flags = batch.meta.held_out
    shape = batch.train.inputs.shape[1:] if len(batch.train) else batch.held.inputs.shape[1:]
    rows = torch.zeros(len(flags), *shape)
    train_rows = [i for i, h in enumerate(flags) if not h]
    held_rows = [i for i, h in enumerate(flags) if h]
    if train_rows:
        rows[train_rows] = batch.train.inputs
    if held_rows:
        rows[held_rows] = batch.held.inputs
    return rows[[i for i, k in enumerate(keep) if k]]


def _hmget(pipe: Pipeline, *, key: str, fields: list[str]) -> None:
    pipe.hmget(key, fields)


def _index(raw: bytes | str | None, gen: bytes | str | None) -> HeldOutIndex:
    """The held-out index as P held stores it (a new one when there is none)."""
    index = HeldOutIndex() if raw is None else HeldOutIndex.from_json(json.loads(raw))
    index.gen = int(gen or 0)
    return index


def _part_names(fields: Iterable[bytes | str]) -> list[str]:
    """The parts named by the fields of P held ("p:<part>" or "p:<part>@"), in order."""
    names = {_text(f)[2:].rstrip("@") for f in fields if _text(f).startswith("p:")}
    return sorted(names, key=int)
