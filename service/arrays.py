"""NumPy files (``.npy``, ``.npz``) → checked inputs and labels, never unpickling and never trusting a header.

An ``.npy`` header is parsed with numpy's own reader (bounded header size), then its dtype and shape are checked
and its data must be exactly as long as the header says, all before any array exists: the array is then a view of
the request's bytes (no allocation a header could inflate).  Object arrays, and anything else that would need
pickle, are refused by dtype, so ``allow_pickle`` never comes into it.  An ``.npz`` is a zip of ``.npy`` files: its
members must be named ``inputs.npy`` and ``labels.npy``, and their declared uncompressed sizes together must stay
within the body limit, checked before any member is inflated (and no member is read beyond its declared size).
"""

from __future__ import annotations

import io
import math
import re
import struct
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.lib import format as npy_format
from torch import Tensor

from cl_core.validation import InvalidData, normalize_label, shown
from service.errors import ApiError
from service.ingest import check_finite

INPUT_KINDS = "fiu"  # float, signed and unsigned integer
LABEL_KINDS = "iuU"  # integer class names, or unicode strings
HEADER_LIMIT = 10_000  # bytes of an .npy header (numpy's own default)
NPZ_MEMBERS = ("inputs", "labels")


# The header NumPy itself writes, e.g. "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 784), }" padded
# with spaces: read by this pattern directly (numpy's reader evaluates the dict literal, which costs more than the
# rest of a prediction's decoding); any other header goes through numpy's reader.
NUMPY_HEADER = re.compile(
    rb"\{'descr': '([<>|=]?[a-zA-Z][0-9]{0,3})', 'fortran_order': (True|False), 'shape': \(((?:[0-9]{1,18}, ?){0,32}"
    rb"[0-9]{0,18})\), \} *\n"
)
PREAMBLE = {1: (10, "<H"), 2: (12, "<I")}  # header length field per major version: (preamble bytes, format)


def read_npy(data: bytes, *, field: str, kinds: str) -> np.ndarray:
    """The array in ``data`` (an .npy file), of one of the dtype ``kinds``; InvalidData otherwise."""
    header = _fast_header(data)
    if header is not None:
        (shape, fortran_order, dtype), offset = header
    else:
        buffer = io.BytesIO(data)
        try:
            version = npy_format.read_magic(buffer)
            if version == (1, 0):
                shape, fortran_order, dtype = npy_format.read_array_header_1_0(buffer, max_header_size=HEADER_LIMIT)
            elif version == (2, 0):
                shape, fortran_order, dtype = npy_format.read_array_header_2_0(buffer, max_header_size=HEADER_LIMIT)
            else:
                raise ValueError(f"format version {version[0]}.{version[1]} is not supported (1.0 and 2.0 are)")
        except (ValueError, EOFError, SyntaxError, TypeError) as exc:
            raise InvalidData(f"{field} is not a valid .npy file: {shown(str(exc), 160)}", field=field) from None
        offset = buffer.tell()
    if dtype.hasobject:
        raise InvalidData(f"{field} is an object array: refused (reading it would mean unpickling)", field=field)
    if dtype.kind not in kinds or dtype.names is not None or dtype.subdtype is not None:
        raise InvalidData(f"{field} has dtype {shown(str(dtype), 60)}: {_expected(kinds)}", field=field)
    if dtype.itemsize == 0:  # numpy cannot even view such data ('<U0')
        raise InvalidData(f"{field} has dtype {shown(str(dtype), 60)} of zero size", field=field)
    if any(d < 0 for d in shape):
        raise InvalidData(f"{field} has a negative dimension in its shape {list(shape)}", field=field)
    count = math.prod(shape)
    expected = count * dtype.itemsize
    if len(data) - offset != expected:
        raise InvalidData(
            f"{field} holds {len(data) - offset} bytes of data, its header announces {expected} "
            f"({list(shape)} × {dtype.itemsize} bytes)",
            field=field,
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return array.reshape(shape, order="F" if fortran_order else "C")


def _fast_header(data: bytes) -> tuple[tuple[tuple[int, ...], bool, np.dtype[Any]], int] | None:
    """(shape, fortran order, dtype) and the data's offset from a header as NumPy writes it; None for any other."""
    if len(data) < 12 or data[:6] != npy_format.MAGIC_PREFIX or data[6] not in PREAMBLE or data[7] != 0:
        return None
    start, length_format = PREAMBLE[data[6]]
    (length,) = struct.unpack_from(length_format, data, start - struct.calcsize(length_format))
    if length > HEADER_LIMIT:
        return None
    match = NUMPY_HEADER.fullmatch(data, start, start + length)
    if match is None:
        return None
    try:
        dtype = np.dtype(match[1].decode())
    except TypeError:
        return None
    shape = tuple(int(d) for d in match[3].split(b",") if d.strip())
    return (shape, match[2] == b"True", dtype), start + length


def _expected(kinds: str) -> str:
    names = {"f": "floating point", "i": "signed integer", "u": "unsigned integer", "U": "unicode string"}
    return "expected " + ", ".join(names[k] for k in kinds)


def read_npz(data: bytes, *, max_bytes: int) -> dict[str, bytes]:
    """The .npy files of an .npz archive by name ('inputs', 'labels'), each read within its declared size."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise InvalidData(f"the body is not an .npz archive ({shown(str(exc), 120)})", field="body") from None
    with archive:
        infos = archive.infolist()
        names = [info.filename.removesuffix(".npy") for info in infos]
        for info, name in zip(infos, names, strict=True):
            if name not in NPZ_MEMBERS or not info.filename.endswith(".npy"):
                raise InvalidData(
                    f"the .npz archive holds {shown(info.filename, 80)}: expected the arrays 'inputs' and optionally "
                    "'labels' (np.savez(file, inputs=..., labels=...))",
                    field="body",
                )
        if len(set(names)) != len(names):
            raise InvalidData("the .npz archive names an array twice", field="body")
        if "inputs" not in names:
            raise InvalidData("the .npz archive has no 'inputs' array", field="inputs")
        total = sum(info.file_size for info in infos)
        if total > max_bytes:
            raise ApiError(413, f"the .npz archive unpacks to {total} bytes, more than the limit of {max_bytes}")
        members = {}
        for info, name in zip(infos, names, strict=True):
            try:
                with archive.open(info) as member:
                    content = member.read(info.file_size + 1)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, OSError) as exc:
                raise InvalidData(
                    f"{name} could not be read from the .npz archive ({shown(str(exc), 120)})", field=name
                ) from None
            except Exception as exc:  # zlib.error, EOFError, … from a corrupt deflate stream
                raise InvalidData(f"{name} is corrupt in the .npz archive ({type(exc).__name__})", field=name) from None
            if len(content) != info.file_size:
                raise InvalidData(f"{name} in the .npz archive is not as long as its entry declares", field=name)
            members[name] = content
        return members


def inputs_from(
    array: np.ndarray, input_shape: Sequence[int], *, field: str, max_inputs: int, limit_field: str | None = None
) -> Tensor:
    """(N, *input_shape) float32 from an array of N inputs: 413 beyond ``max_inputs``, 422 for a wrong shape or a
    value that is not finite in float32 (NaN, ±Inf, or beyond float32's range)."""
    shape = tuple(input_shape)
    if array.ndim != len(shape) + 1 or tuple(array.shape[1:]) != shape or array.shape[0] == 0:
        raise InvalidData(
            f"{field} has shape {list(array.shape)}: expected [N, {', '.join(str(d) for d in shape)}] with N ≥ 1 "
            "(one row per input)",
            field=field,
        )
    if array.shape[0] > max_inputs:
        raise ApiError(
            413, f"at most {max_inputs} inputs per request, got {array.shape[0]}", field=limit_field or field
        )
    with np.errstate(over="ignore", invalid="ignore"):  # values beyond float32 become ±Inf and are rejected below
        values = np.array(array, dtype=np.float32, order="C")  # a copy: the array was a view of the request's bytes
    check_finite(values, field, "{field}[{index}]")
    return torch.from_numpy(values)


def labels_from(array: np.ndarray, count: int, *, field: str = "labels") -> list[str | None]:
    """Class names from an integer or unicode array of ``count`` labels; an empty string marks an unlabeled sample."""
    if array.ndim != 1 or len(array) != count:
        raise InvalidData(
            f"{field} has shape {list(array.shape)}: expected one label per input, [{count}]", field=field
        )
    if array.dtype.kind in "iu":
        return [normalize_label(int(v), i, field=field) for i, v in enumerate(array.tolist())]
    return [None if v == "" else normalize_label(v, i, field=field) for i, v in enumerate(array.tolist())]
