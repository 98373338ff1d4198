"""Moving a model between stores (local ↔ Redis): every version with its weights and method state, the held-out
data of every experience (what the held-out store keeps: the importing store's reservoir takes it in again), and
the samples still waiting for an update, as one zip archive.

Pending samples (not yet trained, deferred ones included) are re-ingested on import, so the importing store splits
them into training and held-out parts again by its own counters; everything already consumed keeps its role
exactly.  Quarantined samples are not moved (release or delete them first), and re-ingested samples are screened
again by the next update (an exemption from label screening does not travel).

The archive holds JSON and safetensors only (nothing executable, nothing pickled), stored uncompressed; reading
checks the total size, the manifest's shape and every name and number in it (`registry.names`) before anything is
written: an archive is as untrusted as any request.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

from cl_core.preprocessing import Preprocessing
from cl_core.validation import shown
from registry import tensors
from registry.base import Store
from registry.captures import CaptureConfig
from registry.errors import Conflict
from registry.names import check_model_name, check_update_id, check_version
from registry.records import ModelRecord, VersionRecord
from registry.samples import SampleSet

ARCHIVE_FORMAT = 1
MANIFEST = "manifest.json"


def _samples_bytes(samples: SampleSet) -> bytes:
    return tensors.dumps({"inputs": samples.inputs}, {"labels": samples.labels})


def _samples_from(data: bytes) -> SampleSet:
    return SampleSet(tensors.loads(data)["inputs"], tensors.metadata(data)["labels"], [])


def export_model(store: Store, name: str) -> bytes:
    """The model as a zip archive (see the module docstring)."""
    record = store.get_model(name)
    versions = store.list_versions(name)
    experiences = store.experiences(name)
    pending = store.claim(name)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for version in versions:
            archive.writestr(f"versions/{version.version}/model.safetensors", store.read_weights(name, version.version))
            archive.writestr(f"versions/{version.version}/state.safetensors", store.read_state(name, version.version))
        held_out = store.held_out(name)  # the held-out store in one read
        empty = SampleSet.concat([], record.input_shape)
        for experience in experiences:
            held = held_out.get(experience.version, empty)
            archive.writestr(f"experiences/{experience.version}.safetensors", _samples_bytes(held))
        waiting = SampleSet.concat([pending.train, pending.held_out], record.input_shape)
        archive.writestr("pending.safetensors", _samples_bytes(waiting))
        manifest = {
            "format": ARCHIVE_FORMAT,
            "model": record.to_json(),
            "live_version": store.live_version(name),
            "versions": [v.to_json() for v in versions],
            "experiences": [{"version": e.version, "update_id": e.update_id} for e in experiences],
        }
        archive.writestr(MANIFEST, json.dumps(manifest))
    return buffer.getvalue()


def _read(archive: zipfile.ZipFile, member: str) -> bytes:
    try:
        return archive.read(member)
    except KeyError as exc:
        raise ValueError(f"the archive lacks {member}") from exc


def import_model(
    store: Store, data: bytes, *, name: str | None = None, holdout_fraction: float = 0.2, max_bytes: int = 8 << 30
) -> ModelRecord:
    """Create a model from an archive `export_model` wrote (under ``name``, or the exported one)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise ValueError(f"not a model archive: {exc}") from exc
    with archive:
        if sum(info.file_size for info in archive.infolist()) > max_bytes:
            raise ValueError(f"the archive unpacks to more than {max_bytes} bytes")
        try:
            manifest: dict[str, Any] = json.loads(_read(archive, MANIFEST))
        except json.JSONDecodeError as exc:
            raise ValueError(f"the archive's {MANIFEST} is not JSON: {exc}") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != ARCHIVE_FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else None
            raise ValueError(f"archive format {shown(found)} is not {ARCHIVE_FORMAT}")
        try:
            record, versions, live, listed = _contents(manifest)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(
                f"the archive's {MANIFEST} is malformed ({type(exc).__name__}: {shown(exc, 100)})"
            ) from exc
        # the name becomes paths and keys: the archive's is checked like any request's (unless another replaces it)
        record.name = check_model_name(record.name if name is None else name)
        payloads = {
            v.version: (
                _read(archive, f"versions/{v.version}/model.safetensors"),
                _read(archive, f"versions/{v.version}/state.safetensors"),
            )
            for v in versions
        }
        experiences = [
            (number, update_id, _samples_from(_read(archive, f"experiences/{number}.safetensors")))
            for number, update_id in listed
        ]
        pending = _samples_from(_read(archive, "pending.safetensors"))
    for payload in payloads.values():  # reject broken tensors before anything is written
        tensors.loads(payload[0])
        tensors.loads(payload[1])
    store.create_model(record)
    try:
        for version in versions:
            version.model = record.name
            weights, state = payloads[version.version]
            store.commit_version(version, weights, state, number=version.version)
        for number, update_id, held in experiences:
            store.add_experience(record.name, number, held, update_id)
        if len(pending):
            store.append_samples(record.name, pending.inputs, pending.labels, holdout_fraction)
        if live is not None:
            store.promote(record.name, int(live), by="import", expected=None)
    except Exception:
        store.delete_model(record.name)  # all or nothing
        raise
    return record


def _contents(manifest: dict[str, Any]) -> tuple[ModelRecord, list[VersionRecord], int | None, list[tuple[int, Any]]]:
    """The model, its versions (oldest first), the live version and the experiences (version, update id) the
    manifest lists, every number and id checked (KeyError or TypeError when the manifest's shape is wrong)."""
    record = ModelRecord.from_json(manifest["model"])
    if record.preprocessing is not None:  # it sizes every image the service decodes for this model
        try:
            spec = Preprocessing.from_json(record.preprocessing)
            spec.check_input_shape(record.input_shape)
        except ValueError as exc:
            raise ValueError(f"the archive's model has an invalid preprocessing spec: {exc}") from exc
        record.preprocessing = spec.to_json()
    if record.capture is not None:  # it decides how much of the traffic the service stores
        try:
            record.capture = CaptureConfig.from_json(record.capture).to_json()
        except (ValueError, TypeError) as exc:
            raise ValueError(f"the archive's model has an invalid capture setting: {exc}") from exc
    versions = [VersionRecord.from_json(v) for v in manifest["versions"]]
    versions.sort(key=lambda v: check_version(v.version))
    live = manifest.get("live_version")
    if live is not None:
        check_version(live)
    listed = []
    for entry in manifest["experiences"]:
        update_id = entry.get("update_id")
        listed.append((check_version(entry["version"]), None if update_id is None else check_update_id(update_id)))
    return record, versions, live, listed


__all__ = ["ARCHIVE_FORMAT", "Conflict", "export_model", "import_model"]
