"""`/models` names the runtime of each model; a model ONNX Runtime cannot serve is served by
eager PyTorch, and the log says why."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from fastapi.testclient import TestClient

from jpegweights.service import Settings, create_app
from tests.conftest import MNIST_STORE

DIGIT = {"inputs": [[0] * 784]}


def served(tmp_path, caplog, **settings) -> tuple[dict, list[dict]]:
    s = Settings(model_dir=MNIST_STORE, cache_dir=tmp_path / "cache", log_requests=False, **settings)
    with caplog.at_level(logging.INFO), TestClient(create_app(s)) as c:
        models = {m: c.get(f"/models/{m}").json() for m in ("mnist-mlp", "mnist-cnn")}
        for m in models:
            assert c.post(f"/predict?model={m}", json=DIGIT).status_code == 200
    events = [json.loads(r.getMessage()) for r in caplog.records if r.getMessage().startswith("{")]
    return models, [e for e in events if e.get("event") == "runtime_fallback"]


def test_models_name_onnx_runtime_where_it_serves(tmp_path, caplog):
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed (the 'onnx' extra)")
    models, fallbacks = served(tmp_path, caplog)
    for m in models.values():
        assert m["runtime"]["name"] == "onnxruntime" and m["runtime"]["fallback"] is None
        assert m["runtime"]["version"]
    assert fallbacks == []
    # ONNX Runtime's own copy of the weights is counted: more than the float32 bytes alone
    assert models["mnist-mlp"]["resident_weight_bytes"] > models["mnist-mlp"]["uncompressed_bytes"]


def test_without_onnx_runtime_each_model_is_served_eager_and_the_log_says_why(tmp_path, caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    models, fallbacks = served(tmp_path, caplog)
    for m in models.values():
        assert m["runtime"]["name"] == "eager" and "onnxruntime is not installed" in m["runtime"]["fallback"]
    assert sorted(e["model"] for e in fallbacks) == ["mnist-cnn", "mnist-mlp"]
    assert all(e["runtime"] == "eager" and "onnxruntime is not installed" in e["reason"] for e in fallbacks)


def test_runtime_eager_asks_for_no_fallback(tmp_path, caplog):
    models, fallbacks = served(tmp_path, caplog, runtime="eager")
    assert [m["runtime"] for m in models.values()] == [{"name": "eager", "version": "", "fallback": None}] * 2
    assert fallbacks == []
