"""A model's image preprocessing: the spec's checks and the transform, exactly the protocol's scaling by default."""

from typing import Any

import numpy as np
import pytest

from cl_core.preprocessing import MAX_SIDE, Preprocessing

GREY = {"mode": "L", "size": [28, 28]}


def test_the_defaults_give_exactly_the_protocols_scaling() -> None:
    spec = Preprocessing.from_json(GREY)
    assert spec.to_json() == {"mode": "L", "size": [28, 28], "scale": [0.0, 1.0], "mean": [0.0], "std": [1.0]}
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    trained_on = pixels.reshape(784).astype(np.float32) / 255.0  # cl_core.data: x.astype(float32) / 255
    x = spec.apply(pixels, [784])
    assert x.dtype == np.float32 and x.shape == (784,)
    assert np.array_equal(x, trained_on)  # bit for bit, not approximately
    assert np.array_equal(spec.apply(pixels, [1, 28, 28]).reshape(784), trained_on)


def test_rgb_is_laid_out_channels_first_and_normalised_per_channel() -> None:
    spec = Preprocessing.from_json(
        {"mode": "RGB", "size": [2, 3], "scale": [-1, 1], "mean": [0.5, 0.0, -0.5], "std": [2.0, 1.0, 0.5]}
    )
    pixels = np.zeros((2, 3, 3), dtype=np.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = 255, 0, 51
    x = spec.apply(pixels, [18])
    red, green, blue = x[:6], x[6:12], x[12:]
    assert np.allclose(red, (1.0 - 0.5) / 2.0) and np.allclose(green, -1.0)
    assert np.allclose(blue, (-1 + 2 * 51 / 255 + 0.5) / 0.5)


def test_an_inverted_scale_maps_white_to_low() -> None:
    spec = Preprocessing.from_json({**GREY, "size": [1, 2], "scale": [1, 0]})
    assert spec.apply(np.array([[0, 255]], dtype=np.uint8), [2]).tolist() == [1.0, 0.0]


def test_the_input_shape_must_hold_exactly_one_image() -> None:
    spec = Preprocessing.from_json(GREY)
    for shape in ([784], [28, 28], [1, 28, 28], [4, 196]):
        spec.check_input_shape(shape)
    with pytest.raises(ValueError, match="784 values per image"):
        spec.check_input_shape([783])
    with pytest.raises(ValueError, match="3×4×4 = 48"):
        Preprocessing.from_json({"mode": "RGB", "size": [4, 4]}).check_input_shape([16])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("L", "must be an object"),
        ({**GREY, "mode": "CMYK"}, "mode"),
        ({**GREY, "mode": None}, "mode"),
        ({"mode": "L"}, "size"),
        ({**GREY, "size": [28]}, "size"),
        ({**GREY, "size": [0, 28]}, "size"),
        ({**GREY, "size": [MAX_SIDE + 1, 28]}, "size"),
        ({**GREY, "size": [True, 28]}, "size"),
        ({**GREY, "size": [28.0, 28]}, "size"),
        ({**GREY, "scale": [0, 0]}, "low ≠ high"),
        ({**GREY, "scale": [0]}, "scale must have 2"),
        ({**GREY, "scale": [0, float("inf")]}, "finite"),
        ({**GREY, "scale": [0, 1e300]}, "finite"),
        ({**GREY, "scale": ["0", 1]}, "number"),
        ({**GREY, "mean": [0.1, 0.2, 0.3]}, "mean must have 1"),
        ({**GREY, "std": [0.0]}, "positive"),
        ({**GREY, "std": [-1.0]}, "positive"),
        ({**GREY, "std": [float("nan")]}, "finite"),
        ({**GREY, "mean": [False]}, "number"),
        ({**GREY, "resample": "nearest"}, "unknown fields"),
    ],
)
def test_invalid_specs_are_refused_with_the_field_named(spec: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Preprocessing.from_json(spec)


def test_pixels_of_the_wrong_size_or_type_are_refused() -> None:
    spec = Preprocessing.from_json({**GREY, "size": [2, 2]})
    with pytest.raises(ValueError, match="uint8"):
        spec.apply(np.zeros((2, 2), dtype=np.float32), [4])
    with pytest.raises(ValueError, match="2×2"):
        spec.apply(np.zeros((3, 2), dtype=np.uint8), [4])
    with pytest.raises(ValueError, match="channels"):
        spec.apply(np.zeros((2, 2, 3), dtype=np.uint8), [4])
