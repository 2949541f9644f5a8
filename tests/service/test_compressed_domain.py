"""`serve --compressed-domain`: the setting, a model's own choice in model.json, what /models
reports, and answers the same as the dense server's."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from jpegweights.cli.main import main
from jpegweights.service import Settings, create_app
from tests.conftest import MNIST_STORE, ROOT

DIGITS = [ROOT / "tests" / "client" / "data" / name for name in ("7.png", "2.png")]


def app(model_dir, tmp_path, mode: str = "off") -> TestClient:
    return TestClient(
        create_app(
            Settings(model_dir=model_dir, cache_dir=tmp_path / "cache", log_requests=False, compressed_domain=mode)
        )
    )


def test_models_report_resident_bytes_and_the_compressed_layers(tmp_path, mnist_test):
    body = {"model": "mnist-mlp", "inputs": mnist_test.images[:32].tolist()}
    with app(MNIST_STORE, tmp_path) as dense, app(MNIST_STORE, tmp_path, "auto") as compressed:
        plain, small = dense.get("/models/mnist-mlp").json(), compressed.get("/models/mnist-mlp").json()
        copies = 2 if plain["runtime"]["name"] == "onnxruntime" else 1  # ONNX Runtime's session holds its own
        assert plain["compressed_domain"] is None and plain["uncompressed_bytes"] == 1_628_200
        assert plain["resident_weight_bytes"] == copies * plain["uncompressed_bytes"]
        # layers computed from JPEG coefficients stay in PyTorch: no second copy of anything
        assert small["runtime"]["name"] == "eager" and "compressed_domain" in small["runtime"]["fallback"]
        report = small["compressed_domain"]
        assert (
            report["policy"] == "auto" and report["layers"] == 1 and report["dense"] == {"3.weight": "not JPEG-coded"}
        )
        assert small["resident_weight_bytes"] == report["resident_bytes"] <= small["uncompressed_bytes"] / 8
        cnn = compressed.get("/models/mnist-cnn").json()["compressed_domain"]
        assert cnn["layers"] == 0 and "dense is smaller" in cnn["dense"]["7.weight"]
        a, b = dense.post("/predict", json=body).json(), compressed.post("/predict", json=body).json()
        assert a["predictions"] == b["predictions"] and len(a["predictions"]) == 32


def test_model_json_chooses_for_its_model_and_a_bad_choice_is_reported(store_copy, tmp_path):
    def set_mode(folder: str, mode: str) -> None:
        path = store_copy / folder / "model.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "compressed_domain": mode}))

    set_mode("mnist-cnn", "all")
    set_mode("mnist-mlp", "sometimes")
    with app(store_copy, tmp_path) as c:  # the server's default is off
        models = c.get("/models").json()
        assert models["models"][0]["name"] == "mnist-cnn" and models["models"][0]["compressed_domain"]["layers"] == 1
        assert "compressed_domain must be 'off', 'auto' or 'all', got 'sometimes'" in models["failed"]["mnist-mlp"]
        assert c.post("/predict", json={"model": "mnist-cnn", "inputs": [[0] * 784]}).status_code == 200


def test_the_cli_flag_and_run(capsys):
    from jpegweights.cli.main import build_parser

    assert build_parser().parse_args(["serve", "--compressed-domain"]).compressed_domain == "auto"
    assert build_parser().parse_args(["serve", "--compressed-domain", "all"]).compressed_domain == "all"
    assert (
        main(["run", str(ROOT / "models" / "mnist-mlp" / "model.jpw"), *map(str, DIGITS), "--compressed-domain"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[1] for line in lines[-2:]] == ["7", "2"]
