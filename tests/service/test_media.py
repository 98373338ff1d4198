"""Inputs as users send them: .npy/.npz arrays, PNG and JPEG images, multipart forms of images.

Every form must give exactly what JSON of the same (decoded) numbers gives, and every hostile variant must answer
4xx and store nothing.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cl_core.validation import InvalidData
from registry.samples import SampleSet
from tests.service.conftest import create, wait_update
from tests.service.media_strategies import BODIES

SPEC = {"mode": "L", "size": [4, 4]}
NOTHING = {"labeled": 0, "unlabeled": 0, "held_out": 0, "per_class": {}}
NPY = {"Content-Type": "application/x-npy"}
NPZ = {"Content-Type": "application/x-npz"}


# -- encoders -----------------------------------------------------------------------------------------------------
def npy(array: np.ndarray, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, **kwargs)
    return buffer.getvalue()


def npz(compressed: bool = False, **arrays: Any) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=75)
    return buffer.getvalue()


def decoded(data: bytes, size: tuple[int, int] = (4, 4)) -> np.ndarray:
    """What a decoder makes of an image file: grey pixels / 255 at the spec's size, flat (the test's own decoding)."""
    image = Image.open(io.BytesIO(data)).convert("L")
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8).reshape(-1).astype(np.float32) / np.float32(255)


def images(n: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """4×4 grey images: class 'top' bright in the upper half, 'bottom' in the lower one."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, (n, 4, 4), dtype=np.uint8)
    labels = ["top" if i % 2 == 0 else "bottom" for i in range(n)]
    for i, label in enumerate(labels):
        rows = slice(0, 2) if label == "top" else slice(2, 4)
        pixels[i, rows] += 180
    return pixels, labels


def as_inputs(pixels: np.ndarray) -> np.ndarray:
    return pixels.reshape(len(pixels), -1).astype(np.float32) / np.float32(255)


def header_only_png(width: int, height: int) -> bytes:
    """A PNG announcing width × height pixels with a sliver of data: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    )


# -- fixtures -----------------------------------------------------------------------------------------------------
def image_model(client: TestClient, name: str = "img", *, trained: bool = True) -> None:
    create(client, name, dim=16, preprocessing=SPEC)
    if trained:
        pixels, labels = images(60)
        samples = [{"input": x.tolist(), "label": y} for x, y in zip(as_inputs(pixels), labels, strict=True)]
        answer = client.post(f"/v1/models/{name}/samples", json={"samples": samples}).json()
        assert wait_update(client, name, answer["update_id"])["status"] == "succeeded"


def pending(client: TestClient, name: str = "img") -> dict[str, Any]:
    answer: dict[str, Any] = client.get(f"/v1/models/{name}").json()["pending"]
    return answer


def stored(client: TestClient, name: str) -> SampleSet:
    claim = client.app.state.runtime.store.claim(name)  # type: ignore[attr-defined]
    return SampleSet.concat([claim.train, claim.held_out], [16])


def predict_json(client: TestClient, inputs: np.ndarray) -> dict[str, Any]:
    response = client.post("/v1/models/img/predict?top_k=2", json={"inputs": inputs.tolist()})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert [p["label"] for p in a["predictions"]] == [p["label"] for p in b["predictions"]]
    for p, q in zip(a["predictions"], b["predictions"], strict=True):
        assert p["probability"] == pytest.approx(q["probability"], abs=1e-6)
        assert [t["label"] for t in p["top_k"]] == [t["label"] for t in q["top_k"]]


# -- the same predictions, whatever the form ----------------------------------------------------------------------
def test_npy_predictions_equal_json(client: TestClient) -> None:
    image_model(client)
    pixels, _ = images(5, seed=1)
    x = as_inputs(pixels)
    expected = predict_json(client, x)
    for array in (x, x.astype(np.float64), x.astype(">f4"), np.asfortranarray(x), x.astype(np.float16)):
        response = client.post("/v1/models/img/predict?top_k=2", content=npy(array), headers=NPY)
        assert response.status_code == 200, (array.dtype, response.text)
        if array.dtype != np.float16:
            same(response.json(), expected)
    raw = pixels.reshape(5, 16)  # integers are numbers too (not images: no scaling)
    same(
        client.post("/v1/models/img/predict?top_k=2", content=npy(raw), headers=NPY).json(),
        predict_json(client, raw.astype(np.float32)),
    )


def test_png_jpeg_and_multipart_equal_json_of_the_decoded_pixels(client: TestClient) -> None:
    image_model(client)
    pixels, _ = images(3, seed=2)
    files = [png(pixels[0]), jpeg(pixels[1]), png(np.repeat(pixels[2][:, :, None], 3, axis=2))]  # RGB → grey
    medias = ["image/png", "image/jpeg", "image/png"]
    for data, media in zip(files, medias, strict=True):
        response = client.post("/v1/models/img/predict?top_k=2", content=data, headers={"Content-Type": media})
        assert response.status_code == 200, response.text
        same(response.json(), predict_json(client, decoded(data)[None]))
    assert np.array_equal(decoded(files[0]), as_inputs(pixels[:1])[0])  # PNG is lossless: the very inputs
    form = [("files", (f"{i}.img", data, media)) for i, (data, media) in enumerate(zip(files, medias, strict=True))]
    response = client.post("/v1/models/img/predict?top_k=2", files=form)
    assert response.status_code == 200, response.text
    same(response.json(), predict_json(client, np.stack([decoded(f) for f in files])))


def test_larger_images_are_resized_as_the_spec_says(client: TestClient) -> None:
    image_model(client)
    big = np.kron(images(1, seed=3)[0][0], np.ones((5, 5), dtype=np.uint8))  # 20×20
    response = client.post("/v1/models/img/predict?top_k=2", content=png(big), headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    same(response.json(), predict_json(client, decoded(png(big))[None]))


def test_a_model_without_preprocessing_refuses_images_clearly(client: TestClient) -> None:
    create(client, "plain", dim=16)
    pixels, labels = images(60)
    samples = [{"input": x.tolist(), "label": y} for x, y in zip(as_inputs(pixels), labels, strict=True)]
    wait_update(client, "plain", client.post("/v1/models/plain/samples", json={"samples": samples}).json()["update_id"])
    before = pending(client, "plain")
    for path in ("/v1/models/plain/predict", "/v1/models/plain/samples"):
        response = client.post(path, content=png(pixels[0]), headers={"Content-Type": "image/png"})
        assert response.status_code == 415, response.text
        assert "without a preprocessing spec" in response.json()["detail"]
        response = client.post(path, files=[("files", ("a.png", png(pixels[0]), "image/png"))])
        assert response.status_code == 415 and "preprocessing" in response.json()["detail"]
    assert pending(client, "plain") == before


# -- samples ------------------------------------------------------------------------------------------------------
def test_samples_in_every_form_store_the_same_tensors(client: TestClient) -> None:
    pixels, labels = images(10, seed=4)
    x = as_inputs(pixels)
    for name in ("j", "z", "f", "s"):
        image_model(client, name, trained=False)
    samples = [{"input": v.tolist(), "label": y} for v, y in zip(x, labels, strict=True)]
    assert client.post("/v1/models/j/samples", json={"samples": samples}).status_code == 202
    answer = client.post("/v1/models/z/samples", content=npz(inputs=x, labels=np.asarray(labels)), headers=NPZ)
    assert answer.status_code == 202, answer.text
    assert answer.json()["accepted"] == 10 and answer.json()["new_classes"] == ["bottom", "top"]  # natural order
    form = [("files", (f"{i}.png", png(p), "image/png")) for i, p in enumerate(pixels)]
    answer = client.post("/v1/models/f/samples", files=form, data={"labels": labels})
    assert answer.status_code == 202, answer.text
    for p, y in zip(pixels, labels, strict=True):
        response = client.post(f"/v1/models/s/samples?label={y}", content=png(p), headers={"Content-Type": "image/png"})
        assert response.status_code == 202, response.text
    reference = stored(client, "j")
    for name in ("z", "f", "s"):
        copy = stored(client, name)
        assert copy.labels == reference.labels, name
        assert np.array_equal(copy.inputs.numpy(), reference.inputs.numpy()), name  # the preprocessed tensors
        assert pending(client, name) == pending(client, "j")


def test_npz_labels_may_be_integers_strings_or_absent(client: TestClient) -> None:
    image_model(client, trained=False)
    x = as_inputs(images(4)[0])
    answer = client.post("/v1/models/img/samples", content=npz(inputs=x, labels=np.arange(4) + 7), headers=NPZ)
    assert answer.status_code == 202 and answer.json()["new_classes"] == ["7", "8", "9", "10"]
    answer = client.post("/v1/models/img/samples", content=npz(inputs=x), headers=NPZ)
    assert answer.json()["unlabeled"] == 4
    mixed = np.asarray(["a", "", " b ", ""])
    answer = client.post("/v1/models/img/samples", content=npz(True, inputs=x, labels=mixed), headers=NPZ)
    assert (answer.json()["labeled"] + answer.json()["held_out"], answer.json()["unlabeled"]) == (2, 2)
    assert stored(client, "img").labels[-4:] in (["a", None, "b", None], ["a", "b", None, None])


def test_binary_posts_honour_the_idempotency_key(client: TestClient) -> None:
    image_model(client, trained=False)
    pixels, labels = images(4)
    body = npz(inputs=as_inputs(pixels), labels=np.asarray(labels))
    key = {"Idempotency-Key": "npz-1", **NPZ}
    first = client.post("/v1/models/img/samples", content=body, headers=key).json()
    assert client.post("/v1/models/img/samples", content=body, headers=key).json() == first
    compressed = npz(True, inputs=as_inputs(pixels), labels=np.asarray(labels))  # other bytes, the same samples
    assert client.post("/v1/models/img/samples", content=compressed, headers=key).json() == first
    other = npz(inputs=as_inputs(pixels[:2]))
    response = client.post("/v1/models/img/samples", content=other, headers=key)
    assert response.status_code == 422 and response.json()["field"] == "Idempotency-Key"
    form = [("files", (f"{i}.png", png(p), "image/png")) for i, p in enumerate(pixels)]
    keyed = {"Idempotency-Key": "form-1"}
    first = client.post("/v1/models/img/samples", files=form, data={"labels": labels}, headers=keyed).json()
    again = client.post("/v1/models/img/samples", files=form, data={"labels": labels}, headers=keyed)  # new boundary
    assert again.status_code == 202 and again.json() == first
    counts = pending(client)
    assert counts["labeled"] + counts["held_out"] == 8 and counts["unlabeled"] == 0  # each batch stored once


def _npy_with_header(header: str, data: bytes, version: int = 1) -> bytes:
    text = header.encode("latin-1")
    if version == 1:
        preamble = b"\x93NUMPY\x01\x00"
        pad = -(len(preamble) + 2 + len(text) + 1) % 64
        return preamble + struct.pack("<H", len(text) + pad + 1) + text + b" " * pad + b"\n" + data
    preamble = b"\x93NUMPY\x02\x00"
    pad = -(len(preamble) + 4 + len(text) + 1) % 64
    return preamble + struct.pack("<I", len(text) + pad + 1) + text + b" " * pad + b"\n" + data


def test_npy_headers_of_other_writers_read_alike() -> None:
    from service.arrays import read_npy

    x = np.arange(32, dtype="<f4").reshape(2, 16)
    layouts = [
        npy(x),
        _npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 16), }", x.tobytes(), version=2),
        _npy_with_header("{'shape': (2, 16), 'fortran_order': False, 'descr': '<f4'}", x.tobytes()),  # numpy's reader
        _npy_with_header("{'descr':'<f4','fortran_order':False,'shape':(2,16)}", x.tobytes()),
        _npy_with_header("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 16), }", x.T.tobytes()),
    ]
    for data in layouts:
        assert np.array_equal(read_npy(data, field="inputs", kinds="f"), x)
    refused = [
        _npy_with_header("{'descr': '|O', 'fortran_order': False, 'shape': (2, 16), }", b"\0" * 256),
        _npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 16), }", x.tobytes()[:-1]),
        _npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999, 16), }", x.tobytes()),
        _npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 16), }", x.tobytes()),
        _npy_with_header("{'descr': '<q7', 'fortran_order': False, 'shape': (2, 16), }", x.tobytes()),
        _npy_with_header("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2, 16), }", x.tobytes()),
        _npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 16), '__import__': 1}", x.tobytes()),
        _npy_with_header("__import__('os').system('true')", x.tobytes()),
    ]
    for data in refused:
        with pytest.raises(InvalidData):
            read_npy(data, field="inputs", kinds="f")


# -- hostile arrays -----------------------------------------------------------------------------------------------
def _pickled_npy() -> bytes:
    return npy(np.array([{"x": 1}, None], dtype=object), allow_pickle=True)


def _lying_header() -> bytes:
    data = npy(np.zeros((2, 16), dtype=np.float32))
    return data.replace(b"(2, 16)", b"(9, 16)")  # the header announces more rows than the data holds


def _version_3() -> bytes:
    data = bytearray(npy(np.zeros((1, 16), dtype=np.float32)))
    data[6] = 3
    return bytes(data)


HOSTILE_INPUTS: list[tuple[str, bytes, int]] = [
    ("pickled object array", _pickled_npy(), 422),
    ("a bare pickle", pickle.dumps([[0.0] * 16]), 422),
    ("random bytes", b"\x93NUMPY" + bytes(range(200)), 422),
    ("empty", b"", 422),
    ("truncated", npy(np.zeros((2, 16), dtype=np.float32))[:-5], 422),
    ("trailing bytes", npy(np.zeros((2, 16), dtype=np.float32)) + b"\0\0\0\0", 422),
    ("a header lying about its shape", _lying_header(), 422),
    ("format version 3", _version_3(), 422),
    ("complex", npy(np.zeros((1, 16), dtype=np.complex64)), 422),
    ("bool", npy(np.zeros((1, 16), dtype=bool)), 422),
    ("strings", npy(np.full((1, 16), "1.0")), 422),
    ("structured", npy(np.zeros((1, 16), dtype=[("a", "<f4")])), 422),
    ("datetime", npy(np.zeros((1, 16), dtype="datetime64[s]")), 422),
    ("wrong width", npy(np.zeros((1, 15), dtype=np.float32)), 422),
    ("one input without its batch axis", npy(np.zeros(16, dtype=np.float32)), 422),
    ("no inputs", npy(np.zeros((0, 16), dtype=np.float32)), 422),
    ("images instead of rows", npy(np.zeros((1, 4, 4), dtype=np.float32)), 422),
    ("NaN", npy(np.where(np.arange(48).reshape(3, 16) == 40, np.nan, 0.5).astype(np.float32)), 422),
    ("beyond float32", npy(np.full((1, 16), 1e39)), 422),
    ("huge uint64, finite in float32", npy(np.full((1, 16), 2**64 - 1, dtype=np.uint64)), 200),
]


@pytest.mark.parametrize(("what", "data", "status"), HOSTILE_INPUTS, ids=[h[0] for h in HOSTILE_INPUTS])
def test_hostile_npy_predictions_answer_4xx(client: TestClient, what: str, data: bytes, status: int) -> None:
    image_model(client)
    response = client.post("/v1/models/img/predict", content=data, headers=NPY)
    assert response.status_code == status, (what, response.text)
    if status != 200:
        assert response.json()["field"] == "inputs", response.json()
        assert len(response.json()["detail"]) < 400
    if what == "NaN":
        assert response.json()["index"] == 2
    if what == "pickled object array":
        assert "object array" in response.json()["detail"]


@pytest.mark.parametrize(("what", "data", "status"), HOSTILE_INPUTS, ids=[h[0] for h in HOSTILE_INPUTS])
def test_hostile_npz_inputs_store_nothing(client: TestClient, what: str, data: bytes, status: int) -> None:
    image_model(client, trained=False)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("inputs.npy", data)
    response = client.post("/v1/models/img/samples", content=buffer.getvalue(), headers=NPZ)
    if status == 200:
        assert response.status_code == 202, response.text
        return
    assert response.status_code == status, (what, response.text)
    assert response.json()["field"] == "inputs"
    assert pending(client) == NOTHING


def _npz_bomb_with_a_lying_size() -> bytes:
    """A deflated member of 1 MB whose entries declare 100 bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("inputs.npy", npy(np.zeros((16_384, 16), dtype=np.float32)))
    data = bytearray(buffer.getvalue())
    size = len(npy(np.zeros((16_384, 16), dtype=np.float32)))
    for at in range(len(data) - 4):
        if data[at : at + 4] == struct.pack("<I", size):
            data[at : at + 4] = struct.pack("<I", 100)
    return bytes(data)


ZERO_SIZE_LABELS = "{'descr': '<U0', 'fortran_order': False, 'shape': (4,), }"  # numpy itself writes '<U1'


def _zip(**members: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(f"{name}.npy", data)
    return buffer.getvalue()


def _hostile_archives() -> list[tuple[str, bytes, str, int]]:
    x = as_inputs(images(4)[0])
    return [
        ("not a zip", b"PK\x03\x04 not really", "body", 422),
        ("positional arrays", npz(arr_0=x), "body", 422),
        ("an extra array", npz(inputs=x, weights=np.ones(4)), "body", 422),
        ("no inputs", npz(labels=np.asarray(["a"] * 4)), "inputs", 422),
        ("labels of another length", npz(inputs=x, labels=np.asarray(["a"] * 3)), "labels", 422),
        ("float labels", npz(inputs=x, labels=np.ones(4)), "labels", 422),
        ("boolean labels", npz(inputs=x, labels=np.ones(4, dtype=bool)), "labels", 422),
        ("2-D labels", npz(inputs=x, labels=np.asarray([["a"]] * 4)), "labels", 422),
        ("a label too long", npz(inputs=x, labels=np.asarray(["a", "b", "c", "x" * 65])), "labels", 422),
        ("a label not printable", npz(inputs=x, labels=np.asarray(["a", "b\x07c", "c", "d"])), "labels", 422),
        ("pickled labels", npz(inputs=x, labels=np.asarray(["a", None, "b", "c"], dtype=object)), "labels", 422),
        ("labels of zero size", _zip(inputs=npy(x), labels=_npy_with_header(ZERO_SIZE_LABELS, b"")), "labels", 422),
        ("a deflate bomb", npz(True, inputs=np.zeros((20_000, 16), dtype=np.float32)), "", 413),
        ("a member longer than it declares", _npz_bomb_with_a_lying_size(), "inputs", 422),
    ]


@pytest.mark.parametrize("case", _hostile_archives(), ids=[c[0] for c in _hostile_archives()])
def test_hostile_npz_archives_store_nothing(
    make_client: Callable[..., TestClient], case: tuple[str, bytes, str, int]
) -> None:
    what, data, field, status = case
    client = make_client(max_body_bytes=1_000_000)  # the bomb unpacks to 1.28 MB
    image_model(client, trained=False)
    response = client.post("/v1/models/img/samples", content=data, headers=NPZ)
    assert response.status_code == status, (what, response.text)
    if field:
        assert response.json()["field"] == field, response.json()
    assert pending(client) == NOTHING


def test_array_limits_and_media_types(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_inputs_per_predict=3)
    image_model(client)
    x = as_inputs(images(4)[0])
    response = client.post("/v1/models/img/predict", content=npy(x), headers=NPY)
    assert response.status_code == 413 and response.json()["field"] == "inputs"
    assert client.post("/v1/models/img/predict", content=npz(inputs=x[:1]), headers=NPZ).status_code == 415
    assert client.post("/v1/models/img/samples", content=npy(x[:1]), headers=NPY).status_code == 415
    response = client.post("/v1/models/img/samples?label=a", json={"samples": [{"input": x[0].tolist()}]})
    assert response.status_code == 422 and response.json()["field"] == "label"
    small = make_client(max_samples_per_request=3)
    image_model(small, trained=False)
    response = small.post("/v1/models/img/samples", content=npz(inputs=x), headers=NPZ)
    assert response.status_code == 413 and response.json()["field"] == "samples"
    form = [("files", (f"{i}.png", png(p), "image/png")) for i, p in enumerate(images(4)[0])]
    response = small.post("/v1/models/img/samples", files=form)
    assert response.status_code == 413 and response.json()["field"] == "samples"
    assert pending(small) == NOTHING


# -- hostile images and forms -------------------------------------------------------------------------------------
def _png_16_bit() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((4, 4), 40_000, dtype=np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


HOSTILE_IMAGES: list[tuple[str, bytes, str, int]] = [
    ("random bytes", bytes(range(256)) * 4, "image/png", 422),
    ("a JPEG sent as PNG", jpeg(images(1)[0][0]), "image/png", 422),
    ("a PNG sent as JPEG", png(images(1)[0][0]), "image/jpeg", 422),
    (
        "a truncated PNG",
        png(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))[:300],
        "image/png",
        422,
    ),
    (
        "a truncated JPEG",
        jpeg(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))[:300],
        "image/jpeg",
        422,
    ),
    ("16 bits per pixel", _png_16_bit(), "image/png", 422),
    ("a bomb's header, 10^10 pixels", header_only_png(100_000, 100_000), "image/png", 413),
    ("a bomb's header, over the limit", header_only_png(6_000, 6_000), "image/png", 413),
    ("empty", b"", "image/png", 422),
]


@pytest.mark.parametrize("case", HOSTILE_IMAGES, ids=[c[0] for c in HOSTILE_IMAGES])
def test_hostile_images_answer_4xx_and_store_nothing(client: TestClient, case: tuple[str, bytes, str, int]) -> None:
    what, data, media, status = case
    image_model(client)
    before = pending(client)
    for path in ("/v1/models/img/predict", "/v1/models/img/samples?label=top"):
        response = client.post(path, content=data, headers={"Content-Type": media})
        assert response.status_code == status, (what, path, response.text)
        assert response.json()["field"] == "body"
        response = client.post(path.split("?")[0], files=[("files", ("x", data, media)), ("files", ("y", data, media))])
        assert response.status_code == status, (what, path, response.text)
        assert (response.json()["field"], response.json()["index"]) == ("files", 0)
    assert pending(client) == before


def test_a_decompression_bomb_is_refused_before_it_is_decoded(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_image_pixels=1_000_000)
    image_model(client)
    bomb = io.BytesIO()
    Image.new("L", (3_000, 3_000)).save(bomb, format="PNG")  # 9 MB of pixels in a few kB
    assert len(bomb.getvalue()) < 50_000
    response = client.post("/v1/models/img/predict", content=bomb.getvalue(), headers={"Content-Type": "image/png"})
    assert response.status_code == 413 and "3000×3000" in response.json()["detail"], response.text
    assert "CL_MAX_IMAGE_PIXELS" in response.json()["detail"]


def test_the_pixel_limit_holds_for_a_requests_images_together(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_image_pixels=1_000_000)
    image_model(client)
    before = pending(client)
    bomb = io.BytesIO()
    Image.new("L", (600, 600)).save(bomb, format="PNG")  # 360,000 pixels each, a few hundred bytes
    one = [("files", ("a.png", bomb.getvalue(), "image/png"))]
    assert client.post("/v1/models/img/predict", files=one * 2).status_code == 200
    for path in ("/v1/models/img/predict", "/v1/models/img/samples"):
        response = client.post(path, files=one * 3)
        assert response.status_code == 413, response.text
        assert (response.json()["field"], response.json()["index"]) == ("files", 2)
        assert "together" in response.json()["detail"]
    assert pending(client) == before


def _form(*parts: tuple[str, str | None, str | None, bytes], boundary: str = "b0undary", close: bool = True) -> bytes:
    out = b""
    for name, filename, media, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        out += (f"Content-Type: {media}\r\n" if media else "").encode() + b"\r\n" + data + b"\r\n"
    return out + (f"--{boundary}--\r\n".encode() if close else b"")


def test_hostile_forms_answer_4xx_and_store_nothing(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_inputs_per_predict=3)
    image_model(client)
    before = pending(client)
    one = png(images(1)[0][0])
    multipart = "multipart/form-data; boundary=b0undary"
    cases: list[tuple[str, str, bytes, int, str | None]] = [
        ("no boundary", "multipart/form-data", _form(("files", "a.png", "image/png", one)), 422, "content-type"),
        ("no closing boundary", multipart, _form(("files", "a.png", "image/png", one), close=False), 422, "body"),
        ("garbage", multipart, b"--b0undary\r\nnonsense", 422, "body"),
        ("no files", multipart, _form(("labels", None, None, b"a")), 422, None),
        ("nothing at all", multipart, b"--b0undary--\r\n", 422, "files"),
        ("a GIF", multipart, _form(("files", "a.gif", "image/gif", b"GIF89a")), 415, "files"),
        ("another field", multipart, _form(("files", "a", "image/png", one), ("x", None, None, b"1")), 422, "x"),
        ("files elsewhere", multipart, _form(("images", "a.png", "image/png", one)), 422, "files"),
        (
            "labels of another count",
            multipart,
            _form(("files", "a", "image/png", one), ("files", "b", "image/png", one), ("labels", None, None, b"a")),
            422,
            "labels",
        ),
        (
            "a label field of 2 kB",
            multipart,
            _form(("files", "a", None, one), ("labels", None, None, b"a" * 2048)),
            422,
            "body",
        ),
        (
            "a label not text",
            multipart,
            _form(("files", "a", None, one), ("labels", None, None, b"\xff\xfe")),
            422,
            "labels",
        ),
        ("a bad label", multipart, _form(("files", "a", None, one), ("labels", None, None, b"x" * 65)), 422, "labels"),
        ("too many files", multipart, _form(*[("files", f"{i}", "image/png", one) for i in range(8)]), 413, None),
    ]
    for what, content_type, body, status, field in cases:
        for path in ("/v1/models/img/predict", "/v1/models/img/samples"):
            if ("label" in what and path.endswith("predict")) or ("many" in what and path.endswith("samples")):
                continue
            response = client.post(path, content=body, headers={"Content-Type": content_type})
            assert response.status_code == status, (what, path, response.text)
            if field is not None:
                assert response.json()["field"] == field, (what, path, response.json())
    ok = client.post(
        "/v1/models/img/samples", content=_form(("files", "a", None, one)), headers={"Content-Type": multipart}
    )
    assert ok.status_code == 202, ok.text  # a part without a type: PNG or JPEG, by its content
    assert pending(client)["unlabeled"] == before["unlabeled"] + 1
    response = client.post(
        "/v1/models/img/samples?label=" + "x" * 65, content=one, headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 422 and response.json()["field"] == "label"
    assert pending(client)["unlabeled"] == before["unlabeled"] + 1 and pending(client)["labeled"] == before["labeled"]


# -- anything at all ----------------------------------------------------------------------------------------------
@pytest.fixture
def quiet(make_client: Callable[..., TestClient]) -> TestClient:
    """A served image model whose policy never starts an update (so the pending counts move only by requests)."""
    client = make_client(policy_min_samples_per_new_class=10**6)
    image_model(client, trained=False)
    pixels, labels = images(20)
    samples = [{"input": v.tolist(), "label": y} for v, y in zip(as_inputs(pixels), labels, strict=True)]
    assert client.post("/v1/models/img/samples", json={"samples": samples}).status_code == 202
    update_id = client.post("/v1/models/img/updates", json={}).json()["update_id"]
    assert wait_update(client, "img", update_id)["status"] == "succeeded"
    return client


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), media=st.sampled_from(sorted(BODIES)))
def test_any_binary_body_answers_2xx_or_4xx_and_a_4xx_stores_nothing(
    quiet: TestClient, data: st.DataObject, media: str
) -> None:
    body = data.draw(BODIES[media])
    paths = {"application/x-npy": ["predict"], "application/x-npz": ["samples"]}.get(media, ["predict", "samples"])
    for path in paths:
        before = pending(quiet)
        response = quiet.post(f"/v1/models/img/{path}", content=body, headers={"Content-Type": media})
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            assert set(response.json()) == {"detail", "field", "index"}
            assert pending(quiet) == before, (path, response.text)
        elif path == "samples":
            added = sum(pending(quiet)[k] - before[k] for k in ("labeled", "unlabeled", "held_out"))
            assert added == response.json()["accepted"]
