"""ONNX Runtime serves every bundled model with eager PyTorch's answers; anything it cannot run
falls back to eager PyTorch, with the reason."""

from __future__ import annotations

import sys

import pytest
import torch

from jpegweights import handlers
from jpegweights.codec import load_package
from jpegweights.handlers import Request, runtimes
from tests.conftest import ROOT

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed (the 'onnx' extra)")

PHOTOS = sorted((ROOT / "tests" / "data" / "photos").glob("*.jpg"))
SENTENCES = [s for s in (ROOT / "benchmarks" / "data" / "sentences.txt").read_text().splitlines() if s]
# Stated tolerance, against eager PyTorch on the same inputs: probabilities and unit-length
# embeddings within 1e-4 (1e-6 measured), and the same predicted class
TOLERANCE = 1e-4


def loaded(name: str) -> handlers.Handler:
    package = ROOT / "models" / name / "model.jpw"
    if not package.is_file():
        pytest.skip(f"{name} is not imported (make pretrained{'-large' if 'mpnet' in name else ''})")
    state, manifest = load_package(package)
    return handlers.load(manifest, state)


def requests_for(name: str, mnist_test) -> list[Request]:
    if name.startswith("mnist"):
        digits = mnist_test.images[:64].reshape(64, 784).float().numpy()
        return [Request(inputs=digits[:1]), Request(inputs=digits[:7]), Request(inputs=digits)]
    if name == "mobilenet_v2":
        photos = [p.read_bytes() for p in PHOTOS]
        return [Request(images=photos[:1]), Request(images=photos[:4])]
    # texts of many lengths in one batch: the graph's sequence length varies, padding masked
    return [Request(text=SENTENCES[:1]), Request(text=SENTENCES[:16]), Request(text=["word " * 400, "a"])]


@pytest.mark.parametrize("name", ["mnist-mlp", "mnist-cnn", "mobilenet_v2", "all-minilm-l6-v2", "all-mpnet-base-v2"])
def test_onnx_runtime_answers_as_eager_pytorch_for_every_bundled_model(name, mnist_test):
    handler = loaded(name)
    batches = [handler.decode_request(r) for r in requests_for(name, mnist_test)]
    eager = [handler.run(b) for b in batches]
    choice = handlers.accelerate(handler, "onnxruntime")
    assert (choice.runtime, choice.reason) == ("onnxruntime", None) and handler.runner is not None
    for batch, want in zip(batches, eager):
        got = handler.run(batch)
        assert got.keys() == want.keys()
        for key in want:
            if want[key].is_floating_point():
                assert (got[key] - want[key]).abs().max() <= TOLERANCE, key
            else:
                assert torch.equal(got[key], want[key]), key


def mlp() -> handlers.Handler:
    return loaded("mnist-mlp")


def test_eager_is_eager_and_auto_picks_onnx_runtime_on_the_cpu_only():
    handler = mlp()
    assert handlers.accelerate(handler, "eager") == handlers.Choice("eager") and handler.runner is None
    assert handlers.accelerate(handler, "auto").runtime == "onnxruntime"
    assert handlers.accelerate(handler, "eager").runtime == "eager" and handler.runner is None
    with pytest.raises(ValueError, match="runtime must be one of"):
        handlers.accelerate(handler, "tensorrt")
    handler.device = torch.device("cuda")  # as a CUDA model says (nothing runs): auto keeps PyTorch's CUDA path
    assert handlers.accelerate(handler, "auto") == handlers.Choice("eager")
    assert "serves CPU models here; this one runs on cuda" in handlers.accelerate(handler, "onnxruntime").reason


def fallback(handler: handlers.Handler, runtime: str = "auto") -> str:
    choice = handlers.accelerate(handler, runtime)
    assert choice.runtime == "eager" and handler.runner is None
    # eager PyTorch still answers
    assert handler.run(handler.decode_request(handler.example()))["probabilities"].shape == (1, 10)
    return choice.reason


def test_without_onnx_runtime_installed_eager_pytorch_serves(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    assert "onnxruntime is not installed" in fallback(mlp())


def test_a_module_the_exporter_refuses_falls_back_with_the_exporters_reason(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::frobnicate' to ONNX opset version 17 is not supported")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    reason = fallback(mlp(), "onnxruntime")
    assert reason.startswith("the module cannot run on ONNX Runtime") and "aten::frobnicate" in reason


def test_a_graph_whose_answers_differ_from_eager_pytorch_is_not_used(monkeypatch):
    run = runtimes.OnnxRunner.__call__
    monkeypatch.setattr(runtimes.OnnxRunner, "__call__", lambda self, *a, **k: run(self, *a, **k) + 0.01)
    assert "differ from eager PyTorch's by 0.01" in fallback(mlp())


def test_weights_past_the_export_cap_stay_in_pytorch(monkeypatch):
    monkeypatch.setattr(runtimes, "MAX_EXPORT_BYTES", 1_000_000)  # the MLP has 1,628,200
    assert "its weights are 1,628,200 bytes; ONNX Runtime takes up to 1,000,000 here" in fallback(mlp())


def test_compressed_domain_layers_stay_in_pytorch():
    handler = mlp()
    package = (ROOT / "models" / "mnist-mlp" / "model.jpw").read_bytes()
    state, _ = load_package(ROOT / "models" / "mnist-mlp" / "model.jpw")
    handlers.compress(handler, package, state, "all")
    assert "compressed_domain" in fallback(handler)


@pytest.mark.parametrize("model_type", ["bert", "mpnet"])
def test_a_text_model_that_ignores_an_input_runs_without_it(model_type):
    """MPNet takes no token types: its exported graph has no such input, and is fed without it."""
    from transformers import AutoConfig, AutoModel

    from tests.handlers.tiny_text import CONFIG, tiny_text

    config = {**CONFIG, "model_type": model_type}
    manifest, _ = tiny_text(**config)
    torch.manual_seed(0)
    module = AutoModel.from_config(AutoConfig.for_model(**config)).eval()
    state = {k: v.detach().clone() for k, v in module.state_dict().items() if "position_ids" not in k}
    handler = handlers.load(manifest, state)
    request = Request(text=["the cat sat on the mat", "a dog", "an example sentence"])
    want = handler.run(handler.decode_request(request))["embedding"]
    choice = handlers.accelerate(handler, "onnxruntime")
    assert (choice.runtime, choice.reason) == ("onnxruntime", None)
    assert ("token_type_ids" in handler.runner.taken) == (model_type == "bert")
    got = handler.run(handler.decode_request(request))["embedding"]
    assert (got - want).abs().max() <= TOLERANCE
