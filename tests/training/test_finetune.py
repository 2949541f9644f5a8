"""`jpegweights finetune`: straight-through fine-tuning of the bundled MLP through its own coding.
A few dozen steps on a few thousand images, never a full run (docs/finetune.md has those)."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from jpegweights.cli.main import main
from jpegweights.codec import EncodeConfig, decode, encode
from jpegweights.training.finetune import FinetuneError, coded, finetune, pin
from jpegweights.training.mnist import Split, load_mnist

# Quality 2 with one range for the whole tensor: the coded MLP starts near 27% (post-training),
# so the improvement a few steps make is tens of points, far above any run-to-run spread.
HARSH = EncodeConfig(quality=2, qtable="flat", ranges="tensor", raw_dtype="float16", lossless_below=256)


@pytest.fixture(scope="module")
def mlp(bundled_mlp):
    import json

    with safe_open(str(bundled_mlp / "model.safetensors"), "pt") as f:
        spec = json.loads(f.metadata()["architecture"])
    return load_file(str(bundled_mlp / "model.safetensors")), spec


@pytest.fixture(scope="module")
def splits(mnist_dir):
    full = load_mnist(mnist_dir, "train")
    return full.subset(2048), Split(full.images[-1000:], full.labels[-1000:])


def test_a_few_steps_raise_the_coded_accuracy_and_the_package_is_what_was_trained(mlp, splits):
    state, spec = mlp
    config = pin(state, HARSH)
    result = finetune(state, spec, *splits, config, epochs=1, batch_size=64, lr=1e-3)  # 32 steps
    assert result.start_accuracy < 0.5 and result.history[0].accuracy > result.start_accuracy + 0.3, (
        result.start_accuracy,
        result.history,
    )
    shipped = decode(encode(result.state, result.config, spec))
    trained = coded(result.state, result.config)
    assert all(torch.equal(shipped[k], trained[k]) for k in state)  # what is trained is what ships


def test_distillation_needs_no_labels(mlp, splits):
    state, spec = mlp
    train, validation = splits
    zeros = lambda s: Split(s.images, torch.zeros_like(s.labels))  # noqa: E731  (no label is read)
    result = finetune(
        state, spec, zeros(train), zeros(validation), pin(state, HARSH), epochs=1, batch_size=64, lr=1e-3, distill=True
    )
    assert result.history[0].accuracy > result.start_accuracy + 0.3  # agreement with the float model


def test_the_cli_distills_without_a_training_labels_file(bundled_mlp, mnist_dir, tmp_path):
    data = tmp_path / "unlabelled"
    data.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (data / name).symlink_to(mnist_dir / name)
    argv = [
        "finetune",
        str(bundled_mlp / "model.safetensors"),
        "--data-dir",
        str(data),
        "--quality",
        "2",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "ft.jpw"),
    ]
    assert main(argv) == 1 and not (tmp_path / "ft.jpw").exists()  # labels needed without --distill
    assert main([*argv, "--distill"]) == 0 and (tmp_path / "ft.jpw").is_file()


def test_pin_fixes_codings_and_layouts_and_refuses_an_auto_table(mlp):
    state, _ = mlp
    config = pin(state, HARSH)
    assert dict(config.coding_for) == {"1.weight": "jpeg", "1.bias": "raw", "3.weight": "int8", "3.bias": "raw"}
    assert dict(config.layout_for)["1.weight"].startswith(("rows:", "matrix"))
    with pytest.raises(FinetuneError, match="fixed table"):
        pin(state, EncodeConfig(quality=2, qtable="auto"))


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda train, val: (Split(train.images[:, :20, :20].contiguous(), train.labels), val),
            "the data does not fit the model",
        ),
        (lambda train, val: (Split(train.images, train.labels + 10), val), "the data has label 1"),
    ],
)
def test_data_that_does_not_fit_is_refused(mlp, splits, change, message):
    state, spec = mlp
    with pytest.raises(FinetuneError, match=message):
        finetune(state, spec, *change(*splits), pin(state, HARSH), epochs=1)


def test_a_learning_rate_that_blows_up_is_stopped_with_a_reason(mlp, splits):
    state, spec = mlp
    with pytest.raises(FinetuneError, match="(became|diverges|chance)"):
        finetune(state, spec, *splits, pin(state, HARSH), epochs=2, batch_size=32, lr=1e4)


def test_the_cli_writes_nothing_when_it_fails(bundled_mlp, mnist_dir, tmp_path, capsys):
    out = tmp_path / "ft.jpw"
    argv = ["finetune", str(bundled_mlp / "model.safetensors"), "--data-dir", str(mnist_dir), "--out", str(out)]
    assert main([*argv, "--qtable", "auto"]) == 1
    assert "fixed table" in capsys.readouterr().err and not out.exists()
    assert main([*argv, "--epochs", "0"]) == 1
    assert "at least 1" in capsys.readouterr().err and not out.exists()
    assert (
        main(["finetune", str(bundled_mlp / "model.safetensors"), "--data-dir", str(tmp_path), "--out", str(out)]) == 1
    )
    assert "train-images-idx3-ubyte(.gz) not found" in capsys.readouterr().err and not out.exists()


def test_the_cli_fine_tunes_and_reports_float_post_training_and_fine_tuned_rows(
    bundled_mlp, mnist_dir, tmp_path, capsys
):
    import json

    out, report = tmp_path / "ft.jpw", tmp_path / "report"
    argv = [
        "finetune",
        str(bundled_mlp / "model.safetensors"),
        "--data-dir",
        str(mnist_dir),
        "--out",
        str(out),
        "--quality",
        "2",
        "--epochs",
        "1",
        "--report",
        str(report),
    ]
    assert main(argv) == 0
    rows = {r["method"]: r for r in json.loads((report / "report.json").read_text())["rows"]}
    assert set(rows) == {"float32", "jpegweights (post-training)", "jpegweights finetune"}
    assert (
        rows["jpegweights finetune"]["bytes"] == out.stat().st_size and rows["jpegweights finetune"]["setting"] == "q2"
    )
    assert (
        rows["jpegweights finetune"]["accuracy"] > rows["jpegweights (post-training)"]["accuracy"] + 0.3
    )  # from about 27%
    captured = capsys.readouterr()
    assert (report / "accuracy_vs_size.png").is_file() and "epoch(s)" in captured.out
    assert (
        "points below the float model on the test set: raise the quality" in captured.err
    )  # one epoch at q2 stays well below


@pytest.mark.parametrize("arch, least_ratio", [("mlp", 150), ("cnn", 20)])
def test_the_bundled_fine_tuned_packages_score_what_their_report_says(arch, least_ratio, mnist_test):
    import json
    from pathlib import Path

    from jpegweights.codec import load_package
    from jpegweights.handlers import build
    from jpegweights.training.train import accuracy

    root = Path(__file__).resolve().parents[2]
    package = root / "models" / f"mnist-{arch}" / "model-ft.jpw"
    row = next(
        r
        for r in json.loads((root / "docs" / "results" / f"mnist-{arch}" / "report.json").read_text())["rows"]
        if r["method"] == "jpegweights finetune"
    )
    state, manifest = load_package(package)
    model = build(manifest["architecture"]).eval()
    model.load_state_dict(state)
    assert package.stat().st_size == row["bytes"] and row["ratio_vs_float32"] >= least_ratio and row["change"] >= -0.003
    assert accuracy(model, manifest["architecture"], mnist_test) == pytest.approx(row["accuracy"], abs=1e-6)
