"""Moving a model between stores (local ↔ Redis): every version with its weights and method state, the held-out
data of every experience, and the samples still waiting for an update, as one zip archive.

Pending samples (not yet trained, deferred ones included) are re-ingested on import, so the importing store splits
them into training and held-out parts again by its own counters; everything already consumed keeps its role
exactly.  Quarantined samples are not moved (release or delete them first), and re-ingested samples are screened
again by the next update (an exemption from label screening does not travel).

The archive holds JSON and safetensors only (nothing executable, nothing pickled), stored uncompressed; reading
checks every member's name and the total size before unpacking anything.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

from registry import tensors
from registry.base import Store
from registry.errors import Conflict
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
        for experience in experiences:
            held = store.experience_samples(name, experience.version)
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
        manifest: dict[str, Any] = json.loads(_read(archive, MANIFEST))
        if manifest.get("format") != ARCHIVE_FORMAT:
            raise ValueError(f"archive format {manifest.get('format')!r} is not {ARCHIVE_FORMAT}")
        record = ModelRecord.from_json(manifest["model"])
        if name is not None:
            record.name = name
        versions = sorted((VersionRecord.from_json(v) for v in manifest["versions"]), key=lambda v: v.version)
        payloads = {
            v.version: (
                _read(archive, f"versions/{v.version}/model.safetensors"),
                _read(archive, f"versions/{v.version}/state.safetensors"),
            )
            for v in versions
        }
        experiences = [
            (
                int(e["version"]),
                e.get("update_id"),
                _samples_from(_read(archive, f"experiences/{int(e['version'])}.safetensors")),
            )
            for e in manifest["experiences"]
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
        live = manifest.get("live_version")
        if live is not None:
            store.promote(record.name, int(live), by="import", expected=None)
    except Exception:
        store.delete_model(record.name)  # all or nothing
        raise
    return record


__all__ = ["ARCHIVE_FORMAT", "Conflict", "export_model", "import_model"]
