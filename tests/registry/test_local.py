"""What only the directory store promises: durability across restarts, atomic files, format marker."""

import builtins
import io
import json
import os
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from registry import LocalStore, ModelRecord, PendingCounts, StoreUnavailable, VersionRecord, heldout
from registry import tensors as st
from registry.local import _write_json, write_atomic
from registry.records import ExperienceRecord
from registry.samples import BatchMeta


def test_everything_survives_a_restart(tmp_path: Path) -> None:
    first = LocalStore(tmp_path)
    first.create_model(ModelRecord(name="m", architecture="mlp", input_shape=[2], classes=[]))
    first.append_samples("m", torch.rand(3, 2), ["x", "y", None], 0.0)
    v = first.commit_version(
        VersionRecord(model="m", version=0, parent=None, spec={}, learner={}, method="auto"), b"w", b"s"
    )
    first.promote("m", v.version, by="me")
    second = LocalStore(tmp_path)
    assert second.live_version("m") == 1 and second.read_weights("m", 1) == b"w"
    assert second.claim("m").train.labels == ["x", "y", None]


def test_atomic_write_never_leaves_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    write_atomic(target, b"old")

    with pytest.raises(TypeError):
        write_atomic(target, object())  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_half_written_version_is_invisible(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.create_model(ModelRecord(name="m", architecture="mlp", input_shape=[2], classes=[]))
    staging = tmp_path / "models" / "m" / "versions" / ".commit-crashed"
    staging.mkdir(parents=True)
    (staging / "model.safetensors").write_bytes(st.dumps({}))
    assert store.list_versions("m") == []
    v = store.commit_version(
        VersionRecord(model="m", version=0, parent=None, spec={}, learner={}, method="x"), b"", b""
    )
    assert v.version == 1


def test_refuses_an_unknown_format(tmp_path: Path) -> None:
    (tmp_path / "FORMAT").write_text('{"format": 99}')
    with pytest.raises(StoreUnavailable, match="format 99"):
        LocalStore(tmp_path)


# -- ingestion without listing the batches, crash safety, the held-out store on disk, format 1 -----------------------


def _model(store: LocalStore, name: str = "m") -> None:
    store.create_model(ModelRecord(name=name, architecture="mlp", input_shape=[2], classes=[]))


class _FileSystemCalls:
    """Counts the file-system calls a block makes (listings, opens, stats), by patching the functions every path
    operation ends in."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: Counter[str] = Counter()
        for module, attribute in ((os, "scandir"), (os, "listdir"), (os, "stat"), (os, "open"), (io, "open")):
            original = getattr(module, attribute)

            def counted(*args: Any, _original: Any = original, _name: str = attribute, **kwargs: Any) -> Any:
                self.calls[_name] += 1
                return _original(*args, **kwargs)

            monkeypatch.setattr(module, attribute, counted)
        monkeypatch.setattr(builtins, "open", io.open)


def _post_cost(store: LocalStore, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """File-system calls of what the service does for one post: the pending counts, then the append."""
    with monkeypatch.context() as patch:
        counter = _FileSystemCalls(patch)
        store.pending_counts("m")
        store.append_samples("m", torch.rand(1, 2), ["a"], 0.2, request_key=f"k{uuid.uuid4().hex}")
    return counter.calls


def test_a_post_costs_the_same_file_system_calls_whatever_the_backlog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path)
    _model(store)
    with monkeypatch.context() as fast:
        fast.setattr(os, "fsync", lambda fd: None)  # setting up the backlog only: durability is not measured
        for i in range(5):
            store.append_samples("m", torch.rand(1, 2), ["a"], 0.2, request_key=f"a{i}")
        small = _post_cost(store, monkeypatch)
        for i in range(600):
            store.append_samples("m", torch.rand(1, 2), ["a" if i % 3 else None], 0.2, request_key=f"b{i}")
        store.ack("m", store.claim("m", limit=100), 1, "u")  # some consumed, 450 or so still waiting
        assert store.pending_counts("m").total > 400
        large = _post_cost(store, monkeypatch)
    assert large == small
    assert small["scandir"] == small["listdir"] == 0  # nothing is listed


def test_a_crash_before_the_ledger_neither_reuses_numbers_nor_stores_a_retry_twice(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    _model(store)
    store.append_samples("m", torch.rand(2, 2), ["a", "b"], 0.5)
    ledger, log = tmp_path / "models" / "m" / "ingest.json", tmp_path / "models" / "m" / "requests.log"
    before = ledger.read_bytes()
    ids, held = store.append_samples("m", torch.rand(3, 2), ["a", "a", "b"], 0.5, request_key="k")
    ledger.write_bytes(before)  # the crash: the batch was written, the ledger and the request log were not
    log.write_bytes(b"")
    restarted = LocalStore(tmp_path)
    assert restarted.append_samples("m", torch.rand(3, 2), ["a", "a", "b"], 0.5, request_key="k") == (ids, held)
    more, _ = restarted.append_samples("m", torch.rand(1, 2), ["a"], 0.5)
    assert int(more[0]) == int(ids[-1]) + 1
    counts = restarted.pending_counts("m")
    assert (counts.total, counts.per_class) == (6, {"a": 4, "b": 2})
    log.write_bytes(log.read_bytes() + b"7 torn-by-a-cr")  # a torn last line is not a key
    assert restarted.append_samples("m", torch.rand(1, 2), ["b"], 0.5, request_key="k") == (ids, held)
    other = LocalStore(tmp_path)  # another process reads the log from scratch
    assert other.append_samples("m", torch.rand(1, 2), ["b"], 0.5, request_key="k") == (ids, held)
    assert len(restarted.claim("m").ids) == 6


def test_a_crash_before_the_held_out_index_is_caught_up_from_the_staged_part(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    _model(store)
    store.append_samples("m", torch.rand(10, 2), ["a"] * 10, 0.5)
    index = tmp_path / "models" / "m" / "heldout" / "index.json"
    claim = store.claim("m")
    store.ack("m", claim, 1, "u1")
    before = index.read_bytes()
    store.append_samples("m", torch.rand(4, 2), ["b"] * 4, 0.5)
    second = store.claim("m")
    store.ack("m", second, 2, "u2")
    index.write_bytes(before)  # the crash: experiences.jsonl written, the index not
    restarted = LocalStore(tmp_path)
    held = restarted.held_out("m")
    assert held[1].ids == claim.held_out.ids and held[2].ids == second.held_out.ids
    assert torch.equal(held[2].inputs, second.held_out.inputs)


def test_acknowledged_batches_keep_only_their_training_rows(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    _model(store)
    for _ in range(4):
        store.append_samples("m", torch.rand(1, 2), ["a"], 0.5)  # every second one is held out
    store.ack("m", store.claim("m"), 1, "u")
    batches = sorted((tmp_path / "models" / "m" / "samples").glob("*.safetensors"))
    assert len(batches) == 2  # the two held-out-only batches are gone: their rows are in the held-out store
    assert all(not any(st.metadata(p.read_bytes())["held_out"]) for p in batches)
    assert len(store.experience_samples("m", 1)) == 2


def test_the_held_out_parts_are_consolidated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heldout, "MAX_PARTS", 2)
    store = LocalStore(tmp_path, heldout_capacity=4)
    _model(store)
    offered = {}
    for version in range(1, 13):
        store.append_samples("m", torch.rand(4, 2), ["a", "a", "b", "b"], 0.5)
        claim = store.claim("m")
        store.ack("m", claim, version, None)
        offered.update(dict(zip(claim.held_out.ids, claim.held_out.inputs, strict=True)))
        parts = list((tmp_path / "models" / "m" / "heldout").glob("*.safetensors"))
        stored = sum(len(st.metadata(p.read_bytes())["ids"]) for p in parts)
        assert len(parts) <= 3 and stored <= 2 * 8 + 64
    held = store.held_out("m")
    assert sum(len(s) for s in held.values()) == 8
    assert all(torch.equal(offered[i], x) for s in held.values() for i, x in zip(s.ids, s.inputs, strict=True))


def _format_1_store(root: Path) -> dict[str, Any]:
    """A store as format 1 wrote it: held-out rows inside the batches, numbers in counters.json, no ledger, no
    request log, no held-out store.  Batch 1 (4 rows, 2 held out) was consumed by version 1 except sample 3
    (deferred); batch 2 (2 rows, 1 held out, request key "k") is pending."""
    model = root / "models" / "m"
    (model / "samples").mkdir(parents=True)
    _write_json(root / "FORMAT", {"format": 1})
    _write_json(model / "model.json", ModelRecord(name="m", architecture="mlp", input_shape=[2], classes=[]).to_json())
    _write_json(model / "live.json", {"version": None})
    rows = torch.arange(12.0).reshape(6, 2)
    first = BatchMeta(1, ["a", "a", "b", "b"], [False, True, False, True], ["1", "2", "3", "4"], at=time.time())
    second = BatchMeta(2, ["a", "b"], [True, False], ["5", "6"], at=time.time(), request_key="k")
    second = BatchMeta(**{**second.__dict__, "original_ids": ["5", "6"], "original_held_out": [True, False]})
    (model / "samples" / "000000000001.safetensors").write_bytes(st.dumps({"inputs": rows[:4]}, first.to_json()))
    (model / "samples" / "000000000002.safetensors").write_bytes(st.dumps({"inputs": rows[4:]}, second.to_json()))
    claim = {"from": 0, "upto": 1, "excluded": ["3"], "consumed": {}, "deferred": {"3": 1}}
    _write_json(model / "experiences.json", [ExperienceRecord(1, "u1", claim, labeled=1, held_out=2).to_json()])
    _write_json(model / "counters.json", {"next_batch": 3, "next_sample": 7, "per_class": {"a": 3, "b": 3}})
    return {"rows": rows}


def test_a_format_1_store_is_migrated_when_opened(tmp_path: Path) -> None:
    rows = _format_1_store(tmp_path)["rows"]
    store = LocalStore(tmp_path)
    assert json.loads((tmp_path / "FORMAT").read_text()) == {"format": 3}
    model = tmp_path / "models" / "m"
    assert not (model / "experiences.json").exists() and (model / "experiences.jsonl").exists()
    held = store.held_out("m")
    assert list(held) == [1] and held[1].ids == ["2", "4"] and torch.equal(held[1].inputs, rows[[1, 3]])
    batch = st.metadata((tmp_path / "models" / "m" / "samples" / "000000000001.safetensors").read_bytes())
    assert batch["ids"] == ["1", "3"]  # the held-out rows moved; the deferred sample stays pending in its batch
    assert store.pending_counts("m") == PendingCounts(labeled=2, unlabeled=0, held_out=1, per_class={"a": 1, "b": 2})
    assert store.append_samples("m", torch.rand(2, 2), ["a", "b"], 0.5, request_key="k") == (["5", "6"], [True, False])
    ids, _ = store.append_samples("m", torch.rand(1, 2), ["a"], 0.5)
    assert ids == ["7"]
    claim = store.claim("m")
    assert claim.ids == ["3", "6", "5", "7"]
    store.ack("m", claim, 2, "u2")
    assert list(store.held_out("m")) == [1, 2]
    assert LocalStore(tmp_path).held_out("m")[1].ids == ["2", "4"]  # opened again: nothing migrates twice


def test_experiences_another_store_instance_writes_are_seen(tmp_path: Path) -> None:
    """The parsed experiences.json is kept per instance until the file changes: a second instance on the same folder
    (another process of the same deployment) acknowledges, and the first sees it at once and claims past it."""
    first, second = LocalStore(tmp_path / "s"), LocalStore(tmp_path / "s")
    first.create_model(ModelRecord(name="m", architecture="mlp", input_shape=[3], classes=[]))
    first.append_samples("m", torch.rand(4, 3), ["a", "a", "b", "b"], 0.0)
    assert first.experiences("m") == []  # parsed (nothing yet), then written by the other instance
    second.ack("m", second.claim("m"), version=1, update_id="u1")
    assert [e.version for e in first.experiences("m")] == [1]
    first.append_samples("m", torch.rand(2, 3), ["c", "c"], 0.0)
    assert first.claim("m").train.labels == ["c", "c"]
    first.ack("m", first.claim("m"), version=2, update_id="u2")
    assert [e.version for e in second.experiences("m")] == [1, 2]


def test_the_experience_log_an_instance_extends_is_what_reading_the_file_gives(tmp_path: Path) -> None:
    """An acknowledgement extends the parsed experiences.json (its records, the last consumed batch, carried and
    consumed samples) instead of reading it again: the result equals a fresh instance's parse, deferrals included."""
    store = LocalStore(tmp_path / "s")
    store.create_model(ModelRecord(name="m", architecture="mlp", input_shape=[3], classes=[]))
    for version in (1, 2, 3):
        store.append_samples("m", torch.rand(4, 3), ["a", "a", "b", "new"], 0.0)
        claim = store.claim("m")
        deferred = [i for i, label in zip(claim.train.ids, claim.train.labels, strict=True) if label == "new"]
        store.ack("m", claim, version=version, update_id=f"u{version}", deferred=deferred if version < 3 else ())
    extended, parsed = store._experience_log("m"), LocalStore(tmp_path / "s")._experience_log("m")
    assert extended.records == parsed.records and extended.upto == parsed.upto
    assert extended.carried == parsed.carried and len(extended.carried) == 2  # deferred by updates 1 and 2
    assert extended.consumed == parsed.consumed and len(parsed.consumed) == 2  # both consumed by update 3
    assert store._set_aside("m") == LocalStore(tmp_path / "s")._set_aside("m") and not store._set_aside("m").carried


def _acked(store: LocalStore, version: int) -> None:
    store.append_samples("m", torch.rand(4, 3), ["a", "a", "b", "b"], 0.5)
    store.ack("m", store.claim("m"), version=version, update_id=f"u{version}")


def test_an_acknowledgement_appends_one_line_to_the_experience_log(tmp_path: Path) -> None:
    """The log is appended, never rewritten: its earlier bytes stay as they were and the file keeps its inode."""
    store = LocalStore(tmp_path / "s")
    store.create_model(ModelRecord(name="m", architecture="mlp", input_shape=[3], classes=[]))
    _acked(store, 1)
    log = tmp_path / "s" / "models" / "m" / "experiences.jsonl"
    before, inode = log.read_bytes(), log.stat().st_ino
    _acked(store, 2)
    after = log.read_bytes()
    assert after.startswith(before) and after.count(b"\n") == 2 and log.stat().st_ino == inode
    assert [json.loads(line)["version"] for line in after.splitlines()] == [1, 2]


def test_a_torn_experience_line_was_never_committed_and_is_cut_by_the_next_acknowledgement(tmp_path: Path) -> None:
    """A crash while appending leaves part of a line: no reader takes it for an experience (its samples are still
    pending, and the next update trains on them), and the next acknowledgement cuts it before appending."""
    store = LocalStore(tmp_path / "s")
    store.create_model(ModelRecord(name="m", architecture="mlp", input_shape=[3], classes=[]))
    _acked(store, 1)
    log = tmp_path / "s" / "models" / "m" / "experiences.jsonl"
    committed = log.read_bytes()
    store.append_samples("m", torch.rand(4, 3), ["c", "c", "c", "c"], 0.0)
    with log.open("ab") as f:
        f.write(b'{"version":2,"update_id":"u2","cla')  # the crash
    restarted = LocalStore(tmp_path / "s")
    assert [e.version for e in restarted.experiences("m")] == [1]
    claim = restarted.claim("m")
    assert claim.train.labels == ["c", "c", "c", "c"]  # still pending
    restarted.ack("m", claim, version=2, update_id="u2")
    text = log.read_bytes()
    assert text.startswith(committed) and text.count(b"\n") == 2 and b"cla{" not in text
    assert [e.version for e in LocalStore(tmp_path / "s").experiences("m")] == [1, 2]


def test_a_format_2_store_keeps_its_experiences_in_the_log(tmp_path: Path) -> None:
    """Format 2 wrote experiences.json as one list: opened by this version, the list becomes the log (same
    records, in order) and the store is marked format 3; nothing else changes."""
    store = LocalStore(tmp_path / "s")
    store.create_model(ModelRecord(name="m", architecture="mlp", input_shape=[3], classes=[]))
    for version in (1, 2):
        _acked(store, version)
    model = tmp_path / "s" / "models" / "m"
    records = [json.loads(line) for line in (model / "experiences.jsonl").read_bytes().splitlines()]
    (model / "experiences.jsonl").unlink()
    _write_json(model / "experiences.json", records)  # as format 2 kept them
    _write_json(tmp_path / "s" / "FORMAT", {"format": 2})
    opened = LocalStore(tmp_path / "s")
    assert json.loads((tmp_path / "s" / "FORMAT").read_text()) == {"format": 3}
    assert not (model / "experiences.json").exists()
    assert [e.to_json() for e in opened.experiences("m")] == records
    _acked(opened, 3)
    assert [e.version for e in LocalStore(tmp_path / "s").experiences("m")] == [1, 2, 3]


def test_the_parsed_held_out_index_is_a_copy_for_each_caller_and_follows_the_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    store.create_model(ModelRecord(name="m", architecture="mlp", input_shape=[3], classes=[]))
    _acked(store, 1)
    first = store._held_index("m")
    expected = json.loads(json.dumps(first.to_json()))
    first.classes.clear()
    first.parts.clear()  # a caller that changes its copy and then fails changes nothing for the next one
    assert store._held_index("m").to_json() == expected
    path = tmp_path / "s" / "models" / "m" / "heldout" / "index.json"
    other = heldout.HeldOutIndex.from_json(json.loads(path.read_text()))
    other.next_part += 7
    write_atomic(path, json.dumps(other.to_json()).encode())  # another writer
    assert store._held_index("m").next_part == other.next_part
