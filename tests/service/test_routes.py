from __future__ import annotations

import base64
import hashlib
import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from jpegweights.service import Settings, create_app
from tests.conftest import MNIST_STORE, ROOT


def png(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8), mode="L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_predict_accepts_every_sample_shape_and_images(client, mnist_test):
    images = mnist_test.images[:4].numpy()
    flat = client.post("/predict", json={"inputs": images.reshape(4, 784).tolist()}).json()
    square = client.post("/predict", json={"inputs": images.tolist()}).json()
    channel = client.post("/predict", json={"model": "mnist-mlp", "inputs": images[:, None].tolist()}).json()
    pictures = client.post("/predict", json={"model": "mnist-mlp", "images": [png(i) for i in images]}).json()
    # each may run on another inference worker, whose kernels may round the sums apart (1e-7 here)
    scores = lambda answer: [[(t["index"], t["score"]) for t in row] for row in answer["top_k"]]  # noqa: E731
    exact = lambda answer: {k: v for k, v in answer.items() if k not in ("probabilities", "top_k")}  # noqa: E731
    for other in (square, channel, pictures):
        assert exact(other) == exact(flat)
        assert np.allclose(other["probabilities"], flat["probabilities"], rtol=0, atol=1e-5)
        assert np.allclose(scores(other), scores(flat), rtol=0, atol=1e-5)
    assert flat["model"] == "mnist-mlp" and flat["version"] == "1" and flat["quality"] == 20
    assert flat["predictions"] == mnist_test.labels[:4].tolist()
    assert np.allclose(np.sum(flat["probabilities"], axis=1), 1, atol=1e-5)


def test_predict_with_the_cnn_matches_the_model_run_locally(client, mnist_test):
    from jpegweights.codec import decode, load_manifest
    from jpegweights.handlers import build, preprocess

    data = (ROOT / "models/mnist-cnn/model.jpw").read_bytes()
    spec = load_manifest(data)["architecture"]
    model = build(spec).eval()
    model.load_state_dict(decode(data))
    x = mnist_test.images[:20]
    with torch.no_grad():
        local = model(preprocess(spec, x[:, None])).argmax(1).tolist()
    answer = client.post("/predict", json={"model": "mnist-cnn", "inputs": x.tolist()}).json()
    assert answer["predictions"] == local


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"inputs": [[0] * 783]}, 422, "each sample must be 1x28x28 or 28x28 or 784, got 783"),
        ({"inputs": [[0] * 784, [0] * 10]}, 422, "inputs[1] is not a rectangular array|samples have different shapes"),
        ({"inputs": [[300] * 784]}, 422, "inputs[0] has values outside 0..255 (min 300, max 300)"),
        ({"inputs": [[-1] + [0] * 783]}, 422, "inputs[0] has values outside 0..255"),
        ({"inputs": [["a"] * 784]}, 422, "inputs[0] is not a rectangular array of numbers"),
        ({"inputs": []}, 422, "inputs is empty"),
        ({"inputs": "zeros"}, 422, "inputs: Input should be a valid list"),
        ({"model": "resnet", "inputs": [[0] * 784]}, 404, "unknown model 'resnet' (loaded: mnist-cnn, mnist-mlp)"),
        ({"model": 7, "inputs": [[0] * 784]}, 422, "model: Input should be a valid string"),
        ({"inputs": [[0] * 784], "images": []}, 422, "send exactly one of 'inputs'"),
        ({}, 422, "send exactly one of 'inputs'"),
        ({"inputs": [[0] * 784], "extra": 1}, 422, "extra: Extra inputs are not permitted"),
        ([1, 2], 422, "Input should be a valid dictionary"),
        ({"model": "mnist-mlp", "images": ["!!notbase64!!"]}, 422, "images[0] is not valid base64"),
        (
            {"model": "mnist-mlp", "images": [base64.b64encode(b"hello").decode()]},
            422,
            "images[0] is not a readable JPEG, PNG or WebP image",
        ),
        ({"images": [7]}, 422, "images.0: Input should be a valid string"),
    ],
)
def test_bad_predict_bodies(client, body, status, message):
    r = client.post("/predict", json=body)
    assert r.status_code == status, r.text
    import re

    assert re.search(message if "|" in message else re.escape(message), r.json()["detail"]), r.json()


def test_nan_and_infinity_are_refused(client):
    for token in ("NaN", "Infinity", "-Infinity"):
        body = '{"inputs": [[' + ",".join(["0"] * 783 + [token]) + "]]}"
        r = client.post("/predict", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"] == "inputs[0] contains NaN or Infinity"


def test_malformed_json(client):
    r = client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["detail"].startswith("body is not valid JSON")


def test_too_many_samples_and_too_large_body(tmp_path):
    settings = Settings(
        model_dir=MNIST_STORE, cache_dir=tmp_path, max_samples=3, max_body_bytes=8_000, log_requests=False
    )
    with TestClient(create_app(settings)) as c:
        r = c.post("/predict", json={"inputs": [[0] * 784] * 4})
        assert r.status_code == 413 and r.json()["detail"] == "inputs has 4 samples; the limit is 3 per request"
        r = c.post("/predict", json={"inputs": [[255] * 784] * 3})  # about 9.4 kB
        assert r.status_code == 413 and "exceeds the limit of 8000" in r.json()["detail"]

        def chunks():  # no Content-Length: the limit applies while reading
            for _ in range(10):
                yield b" " * 4000

        r = c.post("/predict", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "exceeds the limit" in r.json()["detail"]


def test_bearer_token(tmp_path, mnist_test):
    settings = Settings(model_dir=MNIST_STORE, cache_dir=tmp_path, token="s3cret", log_requests=False)
    body = {"inputs": mnist_test.images[:1].tolist()}
    with TestClient(create_app(settings)) as c:
        assert c.post("/predict", json=body).status_code == 401
        r = c.post("/predict", json=body, headers={"Authorization": "Bearer wrong"})
        assert (
            r.status_code == 401 and "bearer token" in r.json()["detail"] and r.headers["www-authenticate"] == "Bearer"
        )
        assert c.post("/predict", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.post("/v2/models/mnist-mlp/infer", json={}).status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        for path in (
            "/weights",
            "/models",
            "/models/mnist-mlp",
            "/v2",
            "/v2/models/mnist-mlp",
            "/models/mnist-mlp/weights/1.weight.jpg",
        ):
            assert c.get(path).status_code == 401, path  # weights, listings and metadata too
            assert c.get(path, headers=auth).status_code == 200, path
        for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/openapi.json", "/metrics"):
            assert c.get(path).status_code == 200, (
                path
            )  # probes, the API description and (by default) metrics stay open
    with TestClient(
        create_app(
            Settings(
                model_dir=MNIST_STORE, cache_dir=tmp_path, token="s3cret", protect_metrics=True, log_requests=False
            )
        )
    ) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_weights_etag_304_and_range(client):
    full = client.get("/weights", params={"quality": 20})
    assert full.status_code == 200
    assert full.headers["etag"] == f'"sha256-{hashlib.sha256(full.content).hexdigest()}"'
    assert full.headers["x-jpegweights-quality"] == "20" and int(full.headers["x-uncompressed-bytes"]) == 1628200
    assert int(full.headers["content-length"]) == len(full.content)
    assert (
        client.get("/weights", params={"quality": 20}, headers={"If-None-Match": full.headers["etag"]}).status_code
        == 304
    )
    part = client.get("/weights", params={"quality": 20}, headers={"Range": "bytes=1000-"})
    assert part.status_code == 206 and part.content == full.content[1000:]
    assert part.headers["content-range"] == f"bytes 1000-{len(full.content) - 1}/{len(full.content)}"


def test_weights_at_another_quality_are_encoded_once_and_cached(client, settings):
    a = client.get("/weights", params={"model": "mnist-mlp", "quality": 35})
    b = client.get("/weights", params={"model": "mnist-mlp", "quality": 35})
    assert a.status_code == 200 and a.content == b.content and a.headers["etag"] == b.headers["etag"]
    assert [p.read_bytes() for p in settings.cache_dir.rglob("q35.jpw")] == [a.content]  # under its digest's folder
    from jpegweights.codec import load_manifest

    assert load_manifest(a.content)["tensors"]["1.weight"]["quality"] == 35
    served = client.get("/models/mnist-mlp").json()["bytes_served"]
    assert served["35"] >= 2 * len(a.content)


@pytest.mark.parametrize(
    "params, status, message",
    [
        ({"quality": 0}, 422, "query.quality: Input should be greater than or equal to 1"),
        ({"quality": 101}, 422, "query.quality: Input should be less than or equal to 100"),
        ({"quality": "high"}, 422, "query.quality: Input should be a valid integer"),
        ({"model": "nope"}, 404, "unknown model 'nope'"),
    ],
)
def test_bad_weights_requests(client, params, status, message):
    r = client.get("/weights", params=params)
    assert r.status_code == status and message in r.json()["detail"]


def test_quality_unavailable_without_a_float_source(store_copy, tmp_path):
    (store_copy / "mnist-mlp" / "model.safetensors").unlink()
    with TestClient(create_app(Settings(model_dir=store_copy, cache_dir=tmp_path, log_requests=False))) as c:
        r = c.get("/weights", params={"model": "mnist-mlp", "quality": 50})
        assert r.status_code == 404 and "only quality 20 is available" in r.json()["detail"]
        assert c.get("/weights", params={"model": "mnist-mlp"}).status_code == 200


def test_tensor_images(client):
    r = client.get("/models/mnist-mlp/weights/1.weight.jpg", params={"quality": 20})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size == (644, 644)  # 23x23 tiles of 28x28
    r = client.get("/models/mnist-mlp/weights/3.weight.jpg")
    assert r.status_code == 404 and r.json()["detail"] == "tensor '3.weight' is stored as int8, not as JPEG"
    r = client.get("/models/mnist-mlp/weights/nothing.jpg")
    assert r.status_code == 404 and "no tensor 'nothing'" in r.json()["detail"]


def test_models_listing(client):
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    mlp = models["mnist-mlp"]
    assert mlp["input_shape"] == [1, 28, 28] and mlp["classes"] == 10 and mlp["quality"] == 20
    assert mlp["accuracy"]["20"] > 0.97 and mlp["package_bytes"] < mlp["uncompressed_bytes"] / 25
    assert client.get("/models/unknown").status_code == 404


def test_a_broken_model_is_reported_and_skipped(store_copy, tmp_path):
    (store_copy / "mnist-cnn" / "model.jpw").write_bytes(b"\x00" * 100)
    with TestClient(create_app(Settings(model_dir=store_copy, cache_dir=tmp_path, log_requests=False))) as c:
        ready = c.get("/readyz").json()
        assert ready["ready"] and ready["models"] == ["mnist-mlp"] and "mnist-cnn" in ready["failed"]
        assert c.post("/predict", json={"model": "mnist-cnn", "inputs": [[0] * 784]}).status_code == 404


def test_not_ready_without_models(tmp_path):
    with TestClient(create_app(Settings(model_dir=tmp_path / "empty", cache_dir=tmp_path, log_requests=False))) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 503
        assert c.get("/v2/health/ready").status_code == 400
        r = c.post("/predict", json={"inputs": [[0] * 784]})
        assert r.status_code == 503 and "the model folder (JPEGWEIGHTS_MODEL_DIR) does not exist" in r.json()["detail"]


def test_metrics(client):
    client.post("/predict", json={"inputs": [[0] * 784]})
    text = client.get("/metrics").text
    for name in ("jpegweights_requests_total", "jpegweights_request_seconds_bucket", "jpegweights_batch_size_bucket",
                 "jpegweights_model_decode_seconds", "jpegweights_weights_bytes_total",
                 "jpegweights_ready 1.0"):  # fmt: skip
        assert name in text, name
    assert 'route="/predict"' in text


def test_v2_metadata_and_infer(client, mnist_test):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2").json()["name"] == "jpegweights"
    meta = client.get("/v2/models/mnist-mlp").json()
    assert meta["inputs"][0]["shape"] == [-1, 1, 28, 28] and {o["name"] for o in meta["outputs"]} == {
        "probabilities",
        "predictions",
        "labels",
    }
    assert client.get("/v2/models/mnist-mlp/versions/1/ready").json() == {"name": "mnist-mlp", "ready": True}
    x = mnist_test.images[:5]
    body = {
        "id": "r1",
        "inputs": [{"name": "input", "shape": [5, 784], "datatype": "UINT8", "data": x.reshape(-1).tolist()}],
        "outputs": [{"name": "predictions"}],
    }
    r = client.post("/v2/models/mnist-mlp/infer", json=body).json()
    assert r["id"] == "r1" and r["model_name"] == "mnist-mlp" and [o["name"] for o in r["outputs"]] == ["predictions"]
    assert r["outputs"][0]["data"] == mnist_test.labels[:5].tolist()


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"inputs": []}, 400, "inputs: List should have at least 1 item"),
        (
            {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32"}]},
            400,
            "input 'input' has no data (and no binary_data_size)",
        ),
        (
            {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "BYTES", "data": ["x"]}]},
            400,
            "input 'input' is FP32, not BYTES",
        ),
        (
            {"inputs": [{"name": "input", "shape": [1, 783], "datatype": "FP32", "data": [0] * 783}]},
            400,
            "each sample must be 1x28x28 or 28x28 or 784, got 783",
        ),
        (
            {"inputs": [{"name": "input", "shape": [2, 784], "datatype": "FP32", "data": [0] * 784}]},
            400,
            "input 'input' has 784 values, shape [2, 784] needs 1568",
        ),
        (
            {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [999] * 784}]},
            400,
            "values outside 0..255",
        ),
        (
            {
                "inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [0] * 784}],
                "outputs": [{"name": "logits"}],
            },
            400,
            "unknown output(s) ['logits']",
        ),
    ],
)
def test_bad_v2_requests_use_the_protocol_error_object(client, body, status, message):
    r = client.post("/v2/models/mnist-mlp/infer", json=body)
    assert r.status_code == status and message in r.json()["error"], r.text


def test_v2_unknown_model_and_version(client):
    r = client.get("/v2/models/nope")
    assert r.status_code == 404 and "unknown model 'nope'" in r.json()["error"]
    r = client.get("/v2/models/mnist-mlp/versions/7")
    assert r.status_code == 404 and "has version '1', not '7'" in r.json()["error"]


def test_openapi_documents_the_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/predict", "/weights", "/models/{name}", "/v2/models/{name}/infer", "/metrics"} <= set(paths)


def test_inference_timeout_is_a_504(tmp_path):
    settings = Settings(model_dir=MNIST_STORE, cache_dir=tmp_path, request_timeout_s=1e-9, log_requests=False)
    with TestClient(create_app(settings)) as c:
        r = c.post("/predict", json={"inputs": [[0] * 784]})
        assert r.status_code == 504 and r.json()["detail"] == "inference took longer than 1e-09 s"
