"""Request bodies by media type: what predict and samples accept, and how each becomes checked tensors.

| media type | predict | samples |
| --- | --- | --- |
| ``application/json`` | ``{"inputs": [...]}`` | ``{"samples": [{"input", "label"}]}`` |
| ``application/x-npy`` | one array (N, *input_shape) | — |
| ``application/x-npz`` | — | arrays ``inputs`` (N, *input_shape) and optional ``labels`` (N,) |
| ``image/png``, ``image/jpeg`` | one image | one image (``?label=`` optional) |
| ``multipart/form-data`` | image files in ``files`` | image files in ``files``, optional ``labels`` fields |

Every form ends in the same checks (shape, finiteness in float32, limits) and the same ``{detail, field, index}``
errors as JSON; nothing is stored before all of a request has decoded.  Images need the model's preprocessing spec
(`cl_core.preprocessing`); a model created without one answers 415.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from fastapi import Request
from PIL import Image
from starlette.concurrency import run_in_threadpool
from torch import Tensor

from cl_core.preprocessing import Preprocessing
from cl_core.validation import InvalidData, shown
from registry import ModelRecord
from service import schemas
from service.arrays import INPUT_KINDS, LABEL_KINDS, inputs_from, labels_from, read_npy, read_npz
from service.bodies import parse_json
from service.errors import ApiError
from service.forms import Form, parse_form
from service.images import SMALL_IMAGE_PIXELS, image_input, open_image, pixels_of, where
from service.ingest import labels_of, to_tensor
from service.serving import LiveModel
from service.settings import Settings

JSON = "application/json"
NPY = "application/x-npy"
NPZ = "application/x-npz"
PNG = "image/png"
JPEG = "image/jpeg"
FORM = "multipart/form-data"
IMAGES = (PNG, JPEG)
PREDICT_MEDIA = (JSON, NPY, PNG, JPEG, FORM)
SAMPLES_MEDIA = (JSON, NPZ, PNG, JPEG, FORM)
ACCEPTED: dict[str, tuple[str, ...]] = {"/predict": PREDICT_MEDIA, "/samples": SAMPLES_MEDIA}
"""Media types by the path's last segment (`service.observability.RequestGuard` answers 415 for others)."""


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def needs_preprocessing(name: str, spec: Preprocessing | None) -> Preprocessing:
    if spec is None:
        raise ApiError(
            415,
            f'model {name!r} takes no images: it was created without a preprocessing spec ("preprocessing": '
            "{mode, size, scale, mean, std} in POST /v1/models); send its inputs as JSON or as a NumPy array",
            field="content-type",
        )
    return spec


# -- images ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageFile:
    data: bytes
    media: str
    field: str
    index: int | None


def images_to_tensor(
    files: Sequence[ImageFile], spec: Preprocessing, input_shape: Sequence[int], max_pixels: int
) -> Tensor:
    """(N, *input_shape) from N image files; every header is checked before any pixel is decoded."""
    return _decode(_open(files, max_pixels), files, spec, input_shape)


async def images_to_tensor_async(
    files: Sequence[ImageFile], spec: Preprocessing, input_shape: Sequence[int], max_pixels: int
) -> Tensor:
    """`images_to_tensor`, on the event loop for small images (a thread hop would cost more), else in a thread."""
    opened = _open(files, max_pixels)
    if sum(pixels_of(image) for image in opened) <= SMALL_IMAGE_PIXELS:
        return _decode(opened, files, spec, input_shape)
    return await run_in_threadpool(_decode, opened, files, spec, input_shape)


def _open(files: Sequence[ImageFile], max_pixels: int) -> list[Image.Image]:
    """Every image's header, checked; ``max_pixels`` bounds each image and also all of them together (a form of
    many small bombs would otherwise decode as much as one large one, many times over)."""
    opened, total = [], 0
    for f in files:
        image = open_image(f.data, f.media, max_pixels=max_pixels, field=f.field, index=f.index)
        total += pixels_of(image)
        if total > max_pixels:
            raise ApiError(
                413,
                f"the request's images together have more than {max_pixels} pixels (CL_MAX_IMAGE_PIXELS), "
                f"{where(f.field, f.index)} included",
                field=f.field,
                index=f.index,
            )
        opened.append(image)
    return opened


def _decode(
    opened: Sequence[Image.Image], files: Sequence[ImageFile], spec: Preprocessing, input_shape: Sequence[int]
) -> Tensor:
    rows = [
        image_input(image, spec, input_shape, field=f.field, index=f.index)
        for image, f in zip(opened, files, strict=True)
    ]
    return torch.from_numpy(np.stack(rows))


def form_images(form: Form, *, allowed_fields: Sequence[str] = ()) -> list[ImageFile]:
    """The image files of a form (all in the field 'files'); other files, and text fields not in
    ``allowed_fields``, are a 422."""
    for name, _ in form.fields:
        if name not in allowed_fields:
            expected = "image files in 'files'" + (f" and text fields {list(allowed_fields)}" if allowed_fields else "")
            raise InvalidData(f"unexpected form field {shown(name, 64)}: expected {expected}", field=name)
    files = []
    for index, part in enumerate(form.files):
        if part.name != "files":
            raise InvalidData(
                f"form file {index} is in the field {shown(part.name, 64)}: send image files in 'files'",
                field="files",
                index=index,
            )
        files.append(ImageFile(part.data, part.media or "application/octet-stream", "files", index))
    if not files:
        raise InvalidData("the form holds no image files: send them in the field 'files'", field="files")
    return files


# -- predict --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Upload:
    """A body in a binary form, read but not yet decoded (decoding needs the model)."""

    media: str
    content_type: str
    data: bytes
    label: str | None = None  # samples: ?label= for a single image


async def read_predict(request: Request) -> schemas.PredictRequest | Upload:
    """The body as sent: JSON parsed and validated (errors before the model is looked at, as always), other forms
    as bytes for `predict_inputs`."""
    media = media_type(request)
    if media in PREDICT_MEDIA and media != JSON:
        return Upload(media, request.headers.get("content-type", ""), await request.body())
    return await parse_json(request, schemas.PredictRequest)


async def predict_inputs(body: schemas.PredictRequest | Upload, live: LiveModel, settings: Settings) -> Tensor:
    """The inputs for the live model, whatever the accepted form."""
    limit = settings.max_inputs_per_predict
    if isinstance(body, schemas.PredictRequest):
        if len(body.inputs) > limit:
            raise ApiError(413, f"at most {limit} inputs per request", field="inputs")
        return to_tensor(body.inputs, live.input_shape, "inputs")
    if body.media == NPY:
        array = read_npy(body.data, field="inputs", kinds=INPUT_KINDS)
        return inputs_from(array, live.input_shape, field="inputs", max_inputs=limit)
    spec = needs_preprocessing(live.name, live.preprocessing)
    if body.media in IMAGES:
        files = [ImageFile(body.data, body.media, "body", None)]
    else:
        files = form_images(parse_form(body.data, body.content_type, max_parts=limit))
    return await images_to_tensor_async(files, spec, live.input_shape, settings.max_image_pixels)


# -- samples --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SampleBatch:
    """Decoded samples, checked and ready to store."""

    inputs: Tensor
    labels: list[str | None]
    request: schemas.SamplesRequest | None = None  # the JSON body, when it came as JSON

    def digest(self) -> str:
        """What an Idempotency-Key is bound to: the JSON body, or for the binary forms the decoded samples (so a
        retried multipart post with a new boundary, or an .npz compressed differently, is the same request)."""
        if self.request is not None:
            return hashlib.sha256(self.request.model_dump_json().encode()).hexdigest()
        h = hashlib.sha256(b"samples\0")
        h.update(json.dumps(list(self.inputs.shape)).encode())
        h.update(self.inputs.numpy().tobytes())
        h.update(json.dumps(self.labels).encode())
        return h.hexdigest()


async def read_samples(request: Request, label: str | None) -> schemas.SamplesRequest | Upload:
    """The body as sent: JSON parsed and validated, other forms as bytes for `decode_samples`."""
    media = media_type(request)
    if label is not None and media not in IMAGES:
        raise InvalidData(
            "the query parameter 'label' labels a single image body (image/png, image/jpeg)", field="label"
        )
    if media == JSON or media not in SAMPLES_MEDIA:
        return await parse_json(request, schemas.SamplesRequest)
    return Upload(media, request.headers.get("content-type", ""), await request.body(), label)


def decode_samples(body: schemas.SamplesRequest | Upload, record: ModelRecord, settings: Settings) -> SampleBatch:
    """Checked inputs and labels for ``record``'s model (blocking: runs in the thread pool)."""
    limit = settings.max_samples_per_request
    if isinstance(body, schemas.SamplesRequest):
        if len(body.samples) > limit:
            raise ApiError(413, f"at most {limit} samples per request", field="samples")
        inputs = to_tensor([s.input for s in body.samples], record.input_shape, "input", "samples[{index}].input")
        return SampleBatch(inputs, labels_of([s.label for s in body.samples]), body)
    if body.media == NPZ:
        members = read_npz(body.data, max_bytes=settings.max_body_bytes)
        array = read_npy(members["inputs"], field="inputs", kinds=INPUT_KINDS)
        inputs = inputs_from(array, record.input_shape, field="inputs", max_inputs=limit, limit_field="samples")
        labels: list[str | None] = [None] * len(inputs)
        if "labels" in members:
            labels = labels_from(read_npy(members["labels"], field="labels", kinds=LABEL_KINDS), len(inputs))
        return SampleBatch(inputs, labels)
    spec = needs_preprocessing(record.name, _spec(record))
    if body.media in IMAGES:
        files = [ImageFile(body.data, body.media, "body", None)]
        inputs = images_to_tensor(files, spec, record.input_shape, settings.max_image_pixels)
        return SampleBatch(inputs, labels_of([body.label]))
    form = parse_form(body.data, body.content_type, max_parts=2 * limit + 1, max_field_bytes=1024)
    images = form_images(form, allowed_fields=("labels",))
    if len(images) > limit:
        raise ApiError(413, f"at most {limit} samples per request", field="samples")
    texts = [value for name, value in form.fields if name == "labels"]
    if texts and len(texts) != len(images):
        raise InvalidData(
            f"{len(texts)} 'labels' fields for {len(images)} files: give one per file, in order ('' for unlabeled), "
            "or none",
            field="labels",
        )
    inputs = images_to_tensor(images, spec, record.input_shape, settings.max_image_pixels)
    labels = labels_from(np.asarray(texts, dtype=np.str_), len(images)) if texts else [None] * len(images)
    return SampleBatch(inputs, labels)


def _spec(record: ModelRecord) -> Preprocessing | None:
    return None if record.preprocessing is None else Preprocessing.from_json(record.preprocessing)


# -- the OpenAPI document ---------------------------------------------------------------------------------------------
_BINARY = {"type": "string", "format": "binary"}
_FILES = {"type": "array", "items": _BINARY, "description": "PNG or JPEG files, one input each"}


def openapi_media(media: Sequence[str]) -> dict[str, Any]:
    """The request-body content entries (besides JSON) of the binary forms in ``media``."""
    content: dict[str, Any] = {}
    for kind in media:
        if kind in (NPY, NPZ, PNG, JPEG):
            content[kind] = {"schema": _BINARY}
        elif kind == FORM:
            properties: dict[str, Any] = {"files": _FILES}
            if media is SAMPLES_MEDIA:
                properties["labels"] = {
                    "type": "array",
                    "items": {"type": "string", "maxLength": 64},
                    "description": "one per file, in order ('' for unlabeled)",
                }
            content[kind] = {
                "schema": {"type": "object", "properties": properties, "required": ["files"]},
                "encoding": {"files": {"contentType": f"{PNG}, {JPEG}"}},
            }
    return content
