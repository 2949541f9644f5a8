"""Compressed-domain inference on every bundled model: the swapped layers' outputs against the
same model rebuilt dense from the same coefficients, and against the served (libjpeg) model."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch

from jpegweights import handlers
from jpegweights.client.model import UNLIMITED
from jpegweights.codec import decode, load_manifest
from jpegweights.compressed import weights as weights_mod
from tests.conftest import ROOT

MODELS = ROOT / "models"
LIMITS = UNLIMITED
PHOTOS = sorted((ROOT / "tests" / "data" / "photos").glob("*.jpg"))


def request(name: str) -> handlers.Request:
    if name.startswith("mnist"):
        return handlers.Request(inputs=np.random.default_rng(0).integers(0, 256, (4, 1, 28, 28)).astype(np.float32))
    if name == "mobilenet_v2":
        return handlers.Request(images=[p.read_bytes() for p in PHOTOS[:2]])
    return handlers.Request(text=["A cat sits on the mat.", "Stock markets fell sharply on Monday."])


def loaded(name: str, policy: str | None):
    data = (MODELS / name / "model.jpw").read_bytes()
    state, manifest = decode(data), load_manifest(data)
    handler = handlers.load(manifest, state)
    report = None if policy is None else handlers.compress(handler, data, state, policy)
    return handler, report


def outputs(handler: handlers.Handler, name: str) -> dict[str, torch.Tensor]:
    return {
        k: v for k, v in handler.run(handler.decode_request(request(name), LIMITS)).items() if v.is_floating_point()
    }


BUNDLED = ["mnist-mlp", "mnist-cnn", "mobilenet_v2", "all-minilm-l6-v2"]


@pytest.mark.parametrize("name", BUNDLED)
def test_both_paths_agree_on_every_bundled_model(name):
    if not (MODELS / name / "model.jpw").is_file():
        pytest.skip(f"models/{name} is not imported: `make pretrained` (make test does it)")
    dense, _ = loaded(name, None)
    compressed, report = loaded(name, "all")
    assert report["layers"] >= 1
    assert any(isinstance(m, handlers.CompressedLinear) for m in compressed.module.modules())
    reference = copy.deepcopy(compressed)
    handlers.decompress(reference.module)
    assert not any(isinstance(m, handlers.CompressedLinear) for m in reference.module.modules())
    got, want, served = outputs(compressed, name), outputs(reference, name), outputs(dense, name)
    for key, y in got.items():
        # the same function as the dense model with the same coefficients
        assert float((y - want[key]).abs().max() / want[key].abs().max()) < 1e-4, key
        # and, up to libjpeg's rounding and clamping of pixels, the served model's answer
        if y.dim() == 2 and y.shape[1] > 10 and name == "all-minilm-l6-v2":
            assert float(torch.nn.functional.cosine_similarity(y, served[key]).min()) > 0.999
        else:
            assert torch.equal(y.argmax(-1), served[key].argmax(-1)), key


def test_auto_keeps_the_mnist_mlp_under_an_eighth_of_float32():
    handler, report = loaded("mnist-mlp", "auto")
    assert report["layers"] == 1 and report["dense"] == {"3.weight": "not JPEG-coded"}
    assert isinstance(handler.module[1], handlers.CompressedLinear)
    assert report["resident_bytes"] == handlers.resident_bytes(handler.module)
    assert report["resident_bytes"] <= report["float32_bytes"] / 8
    assert report["clipped_pixels"] > 0 and 0 < report["max_pixel_difference"] < 4


def test_auto_leaves_dense_what_would_not_pay():
    """The CNN's hidden Linear keeps a quarter of its coefficients: dense is smaller there."""
    handler, report = loaded("mnist-cnn", "auto")
    assert report["layers"] == 0 and "dense is smaller and faster" in report["dense"]["7.weight"]
    assert report["resident_bytes"] == report["float32_bytes"]


def test_a_stream_that_is_not_baseline_stays_dense_with_a_log_line(monkeypatch, caplog):
    def refuse(stream, height, width):
        raise weights_mod.DenseOnlyError("progressive (SOF marker 0xC2)")

    monkeypatch.setattr(weights_mod, "read_coefficients", refuse)
    with caplog.at_level(logging.WARNING, logger="jpegweights.handlers"):
        handler, report = loaded("mnist-mlp", "auto")
    assert report["layers"] == 0 and "progressive" in report["dense"]["1.weight"]
    assert "1.weight stays dense: " in caplog.text and "progressive" in caplog.text
    assert outputs(handler, "mnist-mlp")["probabilities"].shape == (4, 10)


def test_folded_batchnorm_scales_the_rows():
    """MobileNetV2's 1x1 convolutions carry their BatchNorm folded in: the module's weight is
    the decoded tensor with each row scaled, and the compressed layer scales its rows alike."""
    if not (MODELS / "mobilenet_v2" / "model.jpw").is_file():
        pytest.skip("models/mobilenet_v2 is not imported: `make pretrained`")
    handler, _ = loaded("mobilenet_v2", "all")
    plain = weights_mod.load_matrices((MODELS / "mobilenet_v2" / "model.jpw").read_bytes())[0]
    state = decode((MODELS / "mobilenet_v2" / "model.jpw").read_bytes())
    convs = {name: m for name, m in handler.module.named_modules() if isinstance(m, handlers.CompressedConv1x1)}
    assert len(convs) >= 10
    for name, conv in convs.items():
        parent, index = name.rsplit(".", 1)
        bn = f"{parent}.{int(index) + 1}"  # the BatchNorm that followed the convolution
        factor = state[f"{bn}.weight"] / torch.sqrt(state[f"{bn}.running_var"] + 1e-5)
        assert torch.allclose(conv.matrix.scale, plain[f"{name}.weight"].scale * factor, rtol=1e-3, atol=1e-9), name


def test_unknown_policy_is_refused():
    data = (MODELS / "mnist-mlp" / "model.jpw").read_bytes()
    state, manifest = decode(data), load_manifest(data)
    with pytest.raises(ValueError, match="policy"):
        handlers.compress(handlers.load(manifest, state), data, state, "always")


def test_a_model_that_no_longer_runs_is_a_handler_error(monkeypatch):
    def broken(self, x):
        raise RuntimeError("sparse kernel unavailable")

    monkeypatch.setattr(weights_mod.CoefficientMatrix, "matmul", broken)
    with pytest.raises(
        handlers.ArchitectureError,
        match="does not run in the compressed domain: RuntimeError: sparse kernel unavailable",
    ):
        loaded("mnist-mlp", "auto")
