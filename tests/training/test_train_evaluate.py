from __future__ import annotations

import json

import pytest
from PIL import Image

from jpegweights.cli.main import main
from jpegweights.training.mnist import load_mnist
from jpegweights.training.train import accuracy, train


def test_short_training_run_learns(mnist_dir):
    """The one test that trains (it tests ``train`` itself): one epoch on 3,000 images. Such a
    run lands near 90%, so the 80% floor is far from its run-to-run spread; nothing else
    retrains, and the tests that need a trained model use the bundled ones."""
    data = load_mnist(mnist_dir, "train").subset(3000)
    model, spec = train(data, "mlp", epochs=1, seed=1)
    test = load_mnist(mnist_dir, "test").subset(1000)
    assert accuracy(model, spec, test) > 0.80


def test_cnn_architecture_is_lenet_sized():
    from jpegweights.handlers import build
    from jpegweights.training.train import ARCHITECTURES

    spec = ARCHITECTURES["cnn"]
    assert spec["layers"][0]["type"] == "Conv2d" and sum(p.numel() for p in build(spec).parameters()) == 61706


@pytest.fixture(scope="module")
def small_model():
    """The bundled MLP's float weights, written by 'jpegweights train' (make report)."""
    from pathlib import Path

    return Path(__file__).resolve().parents[2] / "models" / "mnist-mlp" / "model.safetensors"


def test_evaluate_report_contents_on_a_subset(small_model, mnist_dir, tmp_path, capsys):
    out = tmp_path / "report"
    argv = [
        "evaluate",
        str(small_model),
        "--data-dir",
        str(mnist_dir),
        "--qualities",
        "50,20,5",
        "--limit",
        "500",
        "--out",
        str(out),
    ]
    argv += ["--preset", "seed"]  # the seed experiment's settings, as make report uses
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    rows = {(r["method"], r["setting"]): r for r in report["rows"]}
    f32 = rows[("float32", "-")]
    assert f32["ratio_vs_float32"] == 1.0 and f32["change"] == 0.0
    assert rows[("float16", "-")]["bytes"] < f32["bytes"] * 0.51
    assert rows[("int8 per-row", "-")]["bytes"] < f32["bytes"] * 0.26
    for q in (50, 20, 5):
        assert ("seed: JPEG file per tile", f"q{q}") in rows
    jpw = [rows[("jpegweights", f"q{q}")] for q in (50, 20, 5)]
    assert jpw[0]["bytes"] > jpw[1]["bytes"] > jpw[2]["bytes"]  # size falls with quality
    assert jpw[1]["ratio_vs_float32"] > 25 and jpw[1]["bytes"] < rows[("seed: JPEG file per tile", "q20")]["bytes"] / 5
    for r in report["rows"]:
        assert 0 <= r["accuracy"] <= 1 and abs(r["change"] - (r["accuracy"] - f32["accuracy"])) < 1e-9
        assert r["ratio_vs_float32"] == pytest.approx(f32["bytes"] / r["bytes"])
    md = (out / "report.md").read_text()
    assert "| jpegweights | q20 |" in md and "the 500 test images" in md
    for png in ("accuracy_vs_size.png", "tiles_q20.png"):
        assert Image.open(out / png).format == "PNG"


def test_target_drop_search_writes_a_package_within_budget(small_model, mnist_dir, tmp_path, capsys):
    from jpegweights.codec import load_manifest

    package = tmp_path / "target.jpw"
    argv = ["evaluate", str(small_model), "--data-dir", str(mnist_dir), "--qualities", "20", "--limit", "300",
            "--out", str(tmp_path / "r"), "--target-drop", "1.0", "--package", str(package),
            "--finetuned", str(small_model.parent / "model-ft.jpw")]  # fmt: skip
    assert main(argv) == 0
    manifest = load_manifest(package.read_bytes())
    assert manifest["architecture"]["layers"][1]["type"] == "Linear"
    assert manifest["tensors"]["1.weight"]["coding"] == "jpeg"
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert any(r["method"] == "jpegweights --target-drop" for r in report["rows"])
    finetuned = [r for r in report["rows"] if r["method"] == "jpegweights finetune"]
    assert (
        len(finetuned) == 1
        and finetuned[0]["setting"] == "q5"
        and finetuned[0]["bytes"] == (small_model.parent / "model-ft.jpw").stat().st_size
    )


def test_evaluate_without_architecture_fails_clearly(tmp_path, mnist_dir, capsys):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2, 2)}, str(path))
    assert main(["evaluate", str(path), "--data-dir", str(mnist_dir)]) == 1
    assert "no architecture in its metadata" in capsys.readouterr().err


def test_train_with_missing_data_fails_clearly(tmp_path, capsys):
    assert main(["train", "--data-dir", str(tmp_path), "--out", str(tmp_path / "m.safetensors")]) == 1
    assert "not found" in capsys.readouterr().err
