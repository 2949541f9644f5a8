"""Which model answers a /predict that names none (docs/service.md, "Which model answers"): a
photo is never answered by an MNIST model unless the request names it or it is the only one
that takes images; and a server with no models says why instead of "still loading"."""

from __future__ import annotations

import json
import logging
import shutil

from fastapi.testclient import TestClient

from jpegweights.service import Settings, create_app
from tests.conftest import MNIST_STORE, ROOT

CAT = ROOT / "examples" / "cat.jpg"


def test_a_photo_without_a_model_name_is_refused_when_several_models_take_images(client):
    r = client.post("/predict", files={"file": CAT.open("rb")})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "names no model" in detail and "takes images (mnist-cnn, mnist-mlp)" in detail and "?model=" in detail
    r = client.post("/predict", json={"images": [__import__("base64").b64encode(CAT.read_bytes()).decode()]})
    assert r.status_code == 422 and "takes images (mnist-cnn, mnist-mlp)" in r.json()["detail"]


def test_named_models_and_raw_inputs_still_reach_a_model(client):
    r = client.post("/predict?model=mnist-cnn", files={"file": CAT.open("rb")})
    assert r.status_code == 200 and r.json()["model"] == "mnist-cnn"
    r = client.post("/predict", json={"inputs": [[0] * 784]})  # checked against the default's declared shape
    assert r.status_code == 200 and r.json()["model"] == "mnist-mlp"
    r = client.post("/predict", json={"inputs": [[0] * 10]})
    assert r.status_code == 422


def test_text_without_a_model_gets_the_defaults_own_refusal_when_no_model_takes_text(client):
    r = client.post("/predict", json={"text": ["a cat"]})
    assert r.status_code == 422 and "classifies images" in r.json()["detail"]


def test_the_only_model_served_takes_every_request(tmp_path):
    store = tmp_path / "models"
    store.mkdir()
    (store / "mnist-cnn").symlink_to(ROOT / "models" / "mnist-cnn", target_is_directory=True)
    with TestClient(create_app(Settings(model_dir=store, cache_dir=tmp_path / "cache", log_requests=False))) as c:
        r = c.post("/predict", files={"file": CAT.open("rb")})
        assert r.status_code == 200 and r.json()["model"] == "mnist-cnn"


def no_models(tmp_path, folder, caplog) -> tuple[dict, dict, list[dict]]:
    settings = Settings(model_dir=folder, cache_dir=tmp_path / "cache", log_requests=False)
    with caplog.at_level(logging.ERROR), TestClient(create_app(settings)) as c:
        ready = c.get("/readyz")
        predict = c.post("/predict", json={"inputs": [[0] * 784]})
    assert ready.status_code == 503 and predict.status_code == 503
    events = [json.loads(r.getMessage()) for r in caplog.records if r.getMessage().startswith("{")]
    return ready.json(), predict.json(), events


def test_a_missing_model_folder_is_named_by_readyz_predict_and_the_log(tmp_path, caplog):
    ready, predict, events = no_models(tmp_path, tmp_path / "absent", caplog)
    why = "no models to serve: the model folder (JPEGWEIGHTS_MODEL_DIR) does not exist"
    assert ready["reason"] == why and predict["detail"] == why
    assert {"event": "no_models", "model_dir": str(tmp_path / "absent"), "why": why} in events


def test_an_empty_model_folder_is_named_by_readyz_predict_and_the_log(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    ready, predict, events = no_models(tmp_path, tmp_path / "empty", caplog)
    assert "holds no model folders" in ready["reason"] and predict["detail"] == ready["reason"]
    assert any(e.get("event") == "no_models" and "holds no model folders" in e["why"] for e in events)


def test_a_folder_whose_models_all_fail_says_so(tmp_path, caplog):
    store = tmp_path / "models"
    shutil.copytree(MNIST_STORE / "mnist-mlp", store / "mnist-mlp")
    (store / "mnist-mlp" / "model.jpw").write_bytes(b"not a package")
    ready, predict, _ = no_models(tmp_path, store, caplog)
    assert "every model in the model folder failed to load (mnist-mlp)" in ready["reason"]
    assert predict["detail"] == ready["reason"] and "mnist-mlp" in ready["failed"]
