"""PNG and JPEG files → model inputs, with Pillow, under a decompression-bomb limit.

An image is opened lazily (Pillow reads only the header), its pixel count is checked against
``CL_MAX_IMAGE_PIXELS`` before a single pixel is decoded, only the format its media type names is tried, and only
8-bit images are accepted.  It is then converted to the model's mode, resized to the spec's size (bilinear, with
Pillow's antialiasing when shrinking; not at all when the size already matches) and normalised by
`cl_core.preprocessing.Preprocessing.apply`, the same transform the training data went through.  The first frame
of an animated PNG is used; an alpha channel is dropped; EXIF orientation is not applied (the pixels as stored).
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image

from cl_core.preprocessing import Preprocessing
from cl_core.validation import InvalidData, shown
from service.errors import ApiError

FORMATS: dict[str, tuple[str, ...]] = {
    "image/png": ("PNG",),
    "image/jpeg": ("JPEG",),
    "application/octet-stream": ("PNG", "JPEG"),  # a form part without a usable type: either, by its content
}
EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})
OBJECT_REPR = re.compile(r" ?<[^<>]{1,80} (?:object )?at 0x[0-9a-fA-F]+>")
"""What Pillow's messages name the file by ("cannot identify image file <_io.BytesIO object at 0x7f…>"): an
address in this process, left out of answers (it tells the caller nothing, and differs on every request)."""
SMALL_IMAGE_PIXELS = 256 * 256
"""Images up to this size are decoded on the event loop (cheaper than a thread hop); larger ones in a thread."""


def open_image(data: bytes, media: str, *, max_pixels: int, field: str, index: int | None) -> Image.Image:
    """The image, header read and checked, pixels not yet decoded: 415/413/422 for the wrong format, too many pixels
    or an unreadable file."""
    formats = FORMATS.get(media)
    if formats is None:
        raise ApiError(
            415,
            f"{where(field, index)} must be image/png or image/jpeg, got {shown(media, 80)}",
            field=field,
            index=index,
        )
    try:  # Pillow's own bomb check (twice its MAX_IMAGE_PIXELS) raises here; ours, below, is the tighter one
        image = Image.open(io.BytesIO(data), formats=list(formats))
    except Image.DecompressionBombError as exc:
        raise ApiError(413, f"{where(field, index)}: {shown(str(exc), 160)}", field=field, index=index) from None
    except Exception as exc:  # Pillow raises many kinds for hostile bytes: UnidentifiedImageError, SyntaxError, …
        kind = " or ".join(formats)
        raise InvalidData(
            f"{where(field, index)} is not a readable {kind} file "
            f"({type(exc).__name__}: {shown(OBJECT_REPR.sub('', str(exc)), 120)})",
            field=field,
            index=index,
        ) from None
    width, height = image.size
    if width * height > max_pixels:
        raise ApiError(
            413,
            f"{where(field, index)} has {width}×{height} pixels, more than the limit of {max_pixels} "
            "(CL_MAX_IMAGE_PIXELS)",
            field=field,
            index=index,
        )
    if image.mode not in EIGHT_BIT_MODES:
        raise InvalidData(
            f"{where(field, index)} has pixel mode {image.mode!r}: only 8 bits per channel are accepted",
            field=field,
            index=index,
        )
    return image


def image_input(
    image: Image.Image, spec: Preprocessing, input_shape: Sequence[int], *, field: str, index: int | None
) -> np.ndarray:
    """Decode, convert, resize and normalise one opened image into a float32 input of ``input_shape``."""
    height, width = spec.size
    try:
        image.load()
        converted = image.convert(spec.mode)
        if converted.size != (width, height):
            converted = converted.resize((width, height), Image.Resampling.BILINEAR)
        pixels = np.asarray(converted, dtype=np.uint8)
    except Exception as exc:  # truncated or corrupt data surfaces only when the pixels are decoded
        raise InvalidData(
            f"{where(field, index)} could not be decoded ({type(exc).__name__}: {shown(str(exc), 120)})",
            field=field,
            index=index,
        ) from None
    return spec.apply(pixels, input_shape)


def pixels_of(image: Image.Image) -> int:
    width, height = image.size
    return int(width * height)


def where(field: str, index: int | None) -> str:
    return field if index is None else f"{field}[{index}]"
