"""What the web page asks the API for: the page itself, the models' figures, each tensor's
pictures at a quality, the live figures, and the API docs with no asset from another host."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import load_file

from jpegweights.codec import decode
from jpegweights.service import Settings, create_app
from jpegweights.service.gallery import TILE_COLUMNS, TILES_PER_PAGE, WINDOW, View


def picture(r) -> np.ndarray:
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
    return np.asarray(Image.open(io.BytesIO(r.content)))


def test_the_page_and_its_files_are_served_from_here(client):
    html = client.get("/").text
    assert '<script src="static/app.js" defer></script>' in html
    for path in (
        "/static/app.js",
        "/static/style.css",
        "/static/favicon.svg",
        "/static/vendor/swagger-ui/swagger-ui-bundle.js",
        "/static/vendor/redoc/redoc.standalone.js",
    ):
        assert client.get(path).status_code == 200, path
    for path in ("/", "/static/app.js", "/static/style.css"):
        assert not re.search(r"(src|href)=\"?https?://", client.get(path).text), path
    assert client.get("/static/../models/mnist-mlp/model.json").status_code == 404


@pytest.mark.parametrize(
    "path, asset",
    [
        ("/docs", "/static/vendor/swagger-ui/swagger-ui-bundle.js"),
        ("/redoc", "/static/vendor/redoc/redoc.standalone.js"),
    ],
)
def test_api_docs_load_their_assets_from_this_server(client, path, asset):
    html = client.get(path).text
    assert asset in html and "cdn.jsdelivr.net" not in html and "fonts.googleapis.com" not in html
    assert "cdn.redoc.ly" not in client.get("/static/vendor/redoc/redoc.standalone.js").text


def test_models_report_architecture_parameters_and_fidelity_per_quality(client):
    mlp = client.get("/models/mnist-mlp").json()
    assert mlp["architecture"] == "Sequential: Flatten, Linear 784→512, ReLU, Linear 512→10"
    assert mlp["parameters"] == 784 * 512 + 512 + 512 * 10 + 10 and mlp["uncompressed_bytes"] == 4 * mlp["parameters"]
    fidelity = mlp["fidelity"]
    assert fidelity["metric"] == "accuracy" and 0.97 < fidelity["float"] < 0.99
    assert fidelity["qualities"]["20"] == {"bytes": mlp["package_bytes"], "value": pytest.approx(0.9745, abs=1e-4)}


def test_tensor_listing_at_a_quality_gives_bytes_and_the_error_against_the_float_weights(client, bundled_mlp):
    listing = client.get("/models/mnist-mlp/tensors", params={"quality": 20}).json()
    assert listing["package_bytes"] == (bundled_mlp / "model.jpw").stat().st_size and listing["original"]
    rows = {t["name"]: t for t in listing["tensors"]}
    assert set(rows) == {"1.weight", "1.bias", "3.weight", "3.bias"}
    w1 = rows["1.weight"]
    assert (
        w1["coding"] == "jpeg"
        and w1["quality"] == 20
        and w1["view"] == {"layout": "tiles", "tile": 28, "pages": 1, "window": None}
    )
    float_w = load_file(str(bundled_mlp / "model.safetensors"))["1.weight"]
    coded_w = decode((bundled_mlp / "model.jpw").read_bytes())["1.weight"]
    assert w1["relative_error"] == pytest.approx(float((coded_w - float_w).norm() / float_w.norm()), rel=1e-5)
    finer = {t["name"]: t for t in client.get("/models/mnist-mlp/tensors", params={"quality": 90}).json()["tensors"]}
    assert (
        finer["1.weight"]["bytes"] > 3 * w1["bytes"] and finer["1.weight"]["relative_error"] < w1["relative_error"] / 2
    )
    assert finer["3.weight"] == rows["3.weight"]  # int8: the quality does not touch it


def test_layer_1_is_drawn_as_the_experiment_did_512_tiles_of_28x28(client, bundled_mlp):
    base = "/models/mnist-mlp/tensors/1.weight.png"
    original = picture(client.get(base, params={"kind": "original"}))
    coded = picture(client.get(base, params={"kind": "coded", "quality": 20}))
    difference = picture(client.get(base, params={"kind": "difference", "quality": 20}))
    rows = TILES_PER_PAGE // TILE_COLUMNS
    assert original.shape == coded.shape == difference.shape == (rows * 29 - 1, TILE_COLUMNS * 29 - 1)
    # tile 0 is row 0 of the float matrix, scaled by its own range
    w = load_file(str(bundled_mlp / "model.safetensors"))["1.weight"][0].reshape(28, 28).numpy()
    expected = np.clip(np.rint((w - w.min()) / (w.max() - w.min()) * 255), 0, 255)
    assert np.abs(original[:28, :28].astype(int) - expected).max() <= 1
    assert (original[28, :] == 255).all()  # the gap between tile rows
    assert not np.array_equal(original, coded)
    coarse = picture(client.get(base, params={"kind": "difference", "quality": 5}))
    assert np.abs(coarse.astype(int) - 128).mean() > np.abs(difference.astype(int) - 128).mean()


def test_rows_that_are_squares_are_tiles_and_other_matrices_are_paged_in_windows(client, bundled_mlp):
    assert View.of([600, 300]).to_json() == {"layout": "matrix", "tile": None, "pages": 6, "window": WINDOW}
    assert View.of([64, 3, 3, 3]).to_json()["layout"] == "matrix"  # 27 values a row: no square
    assert View.of([10, 64, 8, 8]).to_json()["layout"] == "matrix"  # 64x64 tiles would make pages of 2 megapixels
    cnn = {t["name"]: t for t in client.get("/models/mnist-cnn/tensors").json()["tensors"]}
    assert cnn["0.weight"]["view"]["tile"] == 5  # the 5x5 kernels
    mlp = {t["name"]: t for t in client.get("/models/mnist-mlp/tensors").json()["tensors"]}
    assert mlp["3.weight"]["view"] == {"layout": "matrix", "tile": None, "pages": 2, "window": WINDOW}  # 10x512
    second = picture(client.get("/models/mnist-mlp/tensors/3.weight.png", params={"page": 1, "kind": "original"}))
    assert second.shape == (10, 512 - WINDOW)
    w = load_file(str(bundled_mlp / "model.safetensors"))["3.weight"][:, WINDOW:].numpy()
    assert np.corrcoef(second.ravel(), w.ravel())[0, 1] > 0.99  # the window's own values, scaled


@pytest.mark.parametrize(
    "path, params, status, message",
    [
        ("/models/mnist-mlp/tensors/nothing.png", {}, 404, "the model has no tensor 'nothing'"),
        (
            "/models/mnist-mlp/tensors/1.weight.png",
            {"page": 1},
            404,
            "page 1 is out of range: the tensor has 1 page(s)",
        ),
        ("/models/mnist-mlp/tensors/1.weight.png", {"page": -1}, 422, "greater than or equal to 0"),
        (
            "/models/mnist-mlp/tensors/1.weight.png",
            {"kind": "x"},
            422,
            "Input should be 'original', 'coded' or 'difference'",
        ),
        ("/models/mnist-mlp/tensors/1.weight.png", {"quality": 101}, 422, "less than or equal to 100"),
        ("/models/nobody/tensors/1.weight.png", {}, 404, "unknown model 'nobody'"),
        ("/models/nobody/tensors", {}, 404, "unknown model 'nobody'"),
        ("/models/mnist-mlp/tensors", {"quality": "x"}, 422, "valid integer"),
    ],
)
def test_bad_gallery_requests(client, path, params, status, message):
    r = client.get(path, params=params)
    assert r.status_code == status and message in r.json()["detail"], r.text


def test_without_float_weights_only_the_coded_picture_is_drawn(store_copy, tmp_path):
    (store_copy / "mnist-mlp" / "model.safetensors").unlink()
    with TestClient(create_app(Settings(model_dir=store_copy, cache_dir=tmp_path, log_requests=False))) as c:
        listing = c.get("/models/mnist-mlp/tensors").json()
        assert not listing["original"] and all(t["relative_error"] is None for t in listing["tensors"])
        assert picture(c.get("/models/mnist-mlp/tensors/1.weight.png")).shape == (927, 463)
        r = c.get("/models/mnist-mlp/tensors/1.weight.png", params={"kind": "difference"})
        assert r.status_code == 404 and "needs the model's float weights" in r.json()["detail"]
        assert c.get("/models/mnist-mlp/tensors", params={"quality": 50}).status_code == 404


def test_stats_count_requests_errors_and_samples(client):
    before = client.get("/stats").json()
    client.post("/predict", json={"inputs": [[0] * 784] * 3})
    client.post("/predict", json={"inputs": [[0] * 3]})
    after = client.get("/stats").json()
    route = lambda s: s["routes"].get("/predict", {"requests": 0, "errors": 0})  # noqa: E731
    assert (
        route(after)["requests"] - route(before)["requests"] == 2
        and route(after)["errors"] - route(before)["errors"] == 1
    )
    samples = lambda s: s["models"].get("mnist-mlp", {"samples": 0})["samples"]  # noqa: E731
    assert samples(after) - samples(before) == 3
    assert after["routes"]["/predict"]["buckets"]["+Inf"] == after["routes"]["/predict"]["requests"]


def test_with_a_token_the_page_is_open_and_its_data_is_not(tmp_path):
    settings = Settings(model_dir=tmp_path / "none", cache_dir=tmp_path, log_requests=False, token="s3cret")
    with TestClient(create_app(settings)) as c:
        assert (
            c.get("/").status_code == 200
            and c.get("/static/app.js").status_code == 200
            and c.get("/docs").status_code == 200
        )
        assert c.get("/stats").status_code == 200  # like /metrics, unless protect_metrics
        assert c.get("/models/mnist-mlp/tensors").status_code == 401
        assert c.get("/models/mnist-mlp/tensors", headers={"Authorization": "Bearer s3cret"}).status_code == 404
    with TestClient(create_app(settings.model_copy(update={"protect_metrics": True}))) as c:
        assert (
            c.get("/stats").status_code == 401
            and c.get("/stats", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        )


def test_an_unreadable_report_leaves_the_model_serving(store_copy, tmp_path):
    meta = json.loads((store_copy / "mnist-mlp" / "model.json").read_text())
    meta["report"] = "report.json"
    (store_copy / "mnist-mlp" / "model.json").write_text(json.dumps(meta))
    (store_copy / "mnist-mlp" / "report.json").write_text(
        '{"rows": [{"method": "jpegweights", "setting": "q20", "accuracy": "high"}]}'
    )
    with TestClient(create_app(Settings(model_dir=store_copy, cache_dir=tmp_path, log_requests=False))) as c:
        assert c.get("/models/mnist-mlp").json()["fidelity"] == {}
        assert c.post("/predict", json={"inputs": [[0] * 784]}).status_code == 200


def test_cycling_through_more_qualities_than_before_never_decodes_a_listing_twice(client, monkeypatch):
    from jpegweights.service import gallery

    decoded = []
    monkeypatch.setattr(gallery, "decode", lambda data, **kw: decoded.append(len(data)) or decode(data, **kw))
    gallery.tensors.cache_clear()
    qualities = [5, 10, 20, 30, 40, 50, 60, 70, 80, 90]  # more than the 8 listings once held
    for _ in range(2):
        for q in qualities:
            assert client.get("/models/mnist-mlp/tensors", params={"quality": q}).status_code == 200
    assert len(decoded) == len(qualities)
