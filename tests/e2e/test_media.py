"""One real `clserve`: the binary forms over real HTTP give JSON's predictions, and the start-up heap is frozen."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from clbench.load import bodies_for, prepare_model, sample_pixels
from tests.e2e.conftest import clserve


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_npy_png_and_forms_over_http_match_json_and_the_heap_is_frozen(tmp_path: Path) -> None:
    log = tmp_path / "clserve.log"
    with clserve(tmp_path / "data", log=log) as url, httpx.Client(base_url=url, timeout=30) as client:
        prepare_model(url, "mlp")  # 'bench': 784 inputs, or a 28×28 grey image
        bodies = bodies_for("mlp")
        path = "/v1/models/bench/predict?top_k=3"

        def post(kind: str) -> dict[str, object]:
            body = bodies[kind]
            answer = client.post(path, content=body.data, headers={"Content-Type": body.content_type})
            assert answer.status_code == 200, answer.text
            result: dict[str, object] = answer.json()
            return result

        assert post("npy") == post("json")
        pixels = (sample_pixels() / np.float32(255)).astype(np.float32).reshape(1, 784)
        assert post("png") == client.post(path, json={"inputs": pixels.tolist()}).json()
        second = io.BytesIO()
        Image.fromarray(sample_pixels(1)).save(second, format="PNG")
        form = [
            ("files", ("a.png", bodies["png"].data, "image/png")),
            ("files", ("b.png", second.getvalue(), "image/png")),
        ]
        both = np.concatenate([pixels, (sample_pixels(1) / np.float32(255)).astype(np.float32).reshape(1, 784)])
        assert client.post(path, files=form).json() == client.post(path, json={"inputs": both.tolist()}).json()
    assert "start-up objects frozen" in log.read_text()
