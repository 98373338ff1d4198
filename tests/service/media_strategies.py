"""Hypothesis strategies for the binary body forms (shared by the fuzzing of the OpenAPI document and the property
tests): files as they claim to be, of every dtype, shape, size and mode (objects, NaN and ±Inf included; images now
and then truncated), or random bytes."""

from __future__ import annotations

import io

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

DTYPES = st.sampled_from(["<f4", ">f8", "<f2", "<i4", "|u1", "|b1", "<c8", "<U3", "<M8[s]"])


def npy_file(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)  # object arrays too: the service must refuse them
    return buffer.getvalue()


@st.composite
def arrays(draw: st.DrawFn, widths: tuple[int, ...] = (8, 16)) -> np.ndarray:
    """Mostly rows of a served model's width (NaN and ±Inf included), sometimes anything, sometimes objects."""
    if draw(st.integers(0, 9)) == 0:
        return np.array([{"x": 1}, None], dtype=object)
    shape = draw(
        st.one_of(
            st.tuples(st.integers(0, 4), st.sampled_from(widths)),
            hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
        )
    )
    return np.asarray(draw(hnp.arrays(DTYPES, shape)))


@st.composite
def npz_file(draw: st.DrawFn) -> bytes:
    inputs = draw(arrays())
    members = {draw(st.sampled_from(["inputs", "inputs", "arr_0"])): inputs}
    if draw(st.booleans()):
        count = len(inputs) if inputs.ndim else 1
        members["labels"] = draw(
            st.one_of(
                hnp.arrays(np.int64, count, elements=st.integers(-5, 5)),
                hnp.arrays("<U4", count, elements=st.sampled_from(["a", "b", "", "c\n", "x" * 4])),
                hnp.arrays(np.float32, count),
            )
        )
    buffer = io.BytesIO()
    if draw(st.booleans()):
        np.savez_compressed(buffer, **members)  # type: ignore[arg-type]
    else:
        np.savez(buffer, **members)  # type: ignore[arg-type]
    return buffer.getvalue()


@st.composite
def image_file(draw: st.DrawFn, kind: str) -> bytes:
    """An image of some size and mode in ``kind``, now and then truncated."""
    mode = draw(st.sampled_from(["L", "RGB", "RGBA", "1", "P"] if kind == "PNG" else ["L", "RGB", "CMYK"]))
    width, height = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    pixels = draw(hnp.arrays(np.uint8, (height, width, 4), elements=st.integers(0, 255)))
    image = Image.fromarray(pixels).convert(mode)  # RGBA, then the mode
    buffer = io.BytesIO()
    image.save(buffer, format=kind)
    data = buffer.getvalue()
    return data[: draw(st.integers(1, len(data)))] if draw(st.integers(0, 4)) == 0 else data


def files(kind: str) -> st.SearchStrategy[bytes]:
    return st.one_of(image_file(kind), st.binary(max_size=256))


BODIES: dict[str, st.SearchStrategy[bytes]] = {
    "application/x-npy": st.one_of(arrays().map(npy_file), st.binary(max_size=256)),
    "application/x-npz": st.one_of(npz_file(), st.binary(max_size=256)),
    "image/png": files("PNG"),
    "image/jpeg": files("JPEG"),
}
