"""Requests crafted to crash the parsers get a 4xx that says why, never a 500."""

from __future__ import annotations

import base64
import io
import zlib

import pytest
import torch
from PIL import Image, PngImagePlugin


def post(client, path, body: bytes):
    return client.post(path, content=body, headers={"content-type": "application/json"})


@pytest.mark.parametrize("path", ["/predict", "/v2/models/mnist-mlp/infer"])
def test_json_nested_10000_deep(client, path):
    r = post(client, path, b"[" * 10000 + b"]" * 10000)
    assert r.status_code == 400 and "nested too deeply" in r.text


@pytest.mark.parametrize("digits", [400, 5000])
@pytest.mark.parametrize("path", ["/predict", "/v2/models/mnist-mlp/infer"])
def test_integers_hundreds_of_digits_long(client, path, digits):
    r = post(client, path, b'{"inputs": [[' + b"9" * digits + b"]]}")
    assert r.status_code == 400 and f"integer of {digits} digits" in r.text


def png_with_huge_text_chunk() -> str:
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * 20_000_000, zip=True)  # 20 MB once inflated, a few KB in the file
    buf = io.BytesIO()
    Image.new("L", (28, 28)).save(buf, format="PNG", pnginfo=info)
    assert len(buf.getvalue()) < len(zlib.compress(b"x" * 20_000_000)) + 10_000
    return base64.b64encode(buf.getvalue()).decode()


def test_png_with_an_oversized_ztxt_chunk(client):
    r = client.post("/predict", json={"model": "mnist-mlp", "images": [png_with_huge_text_chunk()]})
    assert r.status_code == 422 and "images[0] is not a readable JPEG, PNG or WebP image" in r.text


@pytest.mark.parametrize(
    "change, message",
    [
        ({"datatype": []}, "inputs.0.datatype: Input should be 'FP32'"),
        ({"datatype": {}}, "inputs.0.datatype: Input should be 'FP32'"),
        ({"shape": [True, 784]}, "inputs.0.shape.0: Input should be a valid integer"),
    ],
)
def test_v2_fields_of_the_wrong_type(client, change, message):
    tensor = {"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [0] * 784, **change}
    r = client.post("/v2/models/mnist-mlp/infer", json={"inputs": [tensor]})
    assert r.status_code == 400 and message in r.json()["error"]


def test_v2_output_name_that_is_not_a_string(client):
    tensor = {"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [0] * 784}
    r = client.post("/v2/models/mnist-mlp/infer", json={"inputs": [tensor], "outputs": [{"name": []}]})
    assert r.status_code == 400 and "outputs.0.name: Input should be a valid string" in r.json()["error"]


def test_a_model_that_computes_nan_answers_valid_json(client):
    model = client.app.state.runtime.store.get("mnist-mlp")
    weight = model.handler.module[1].weight
    saved, runner = weight.detach().clone(), model.handler.runner
    try:
        model.handler.runner = None  # the module runs, not ONNX Runtime's copy of its weights
        with torch.no_grad():
            weight.fill_(float("nan"))
        r = client.post("/predict", json={"model": "mnist-mlp", "inputs": [[0] * 784]})
        assert r.status_code == 500 and r.json() == {"detail": "the model produced NaN or Infinity for this input"}
    finally:
        model.handler.runner = runner
        with torch.no_grad():
            weight.copy_(saved)
