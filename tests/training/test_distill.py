"""`jpegweights finetune --data`: distillation through the model's handler on unlabelled inputs
(a folder of PNG digits for the bundled MLP), never a full run."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image

from jpegweights.cli.main import main
from jpegweights.pipeline import load_state_dict
from jpegweights.codec import EncodeConfig, load_package
from jpegweights.handlers import Request
from jpegweights.pipeline import Calibration, read_inputs
from jpegweights.training.distill import distill
from jpegweights.training.finetune import FinetuneError, pin
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def digits(tmp_path_factory, mnist_test):
    """80 MNIST test digits as PNG files: the CLI trains on the first 64 and holds out 16."""
    folder = tmp_path_factory.mktemp("digits")
    for i, image in enumerate(mnist_test.images[:80]):
        buf = io.BytesIO()
        Image.fromarray(image.numpy()).save(buf, "PNG")
        (folder / f"{i:03d}.png").write_bytes(buf.getvalue())
    return folder


def test_distilling_on_unlabelled_images_brings_the_coded_model_back_towards_the_float_one(
    bundled_mlp, digits, tmp_path, capsys
):
    out = tmp_path / "distilled.jpw"
    assert (
        main(
            [
                "finetune",
                str(bundled_mlp / "model.safetensors"),
                "--data",
                str(digits),
                "--quality",
                "2",
                "--epochs",
                "20",
                "--lr",
                "1e-3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    start, end = (float(v) for v in re.findall(r"KL (\d+\.\d+)", printed))
    assert end < 0.5 * start, printed  # about 2.4 -> 0.8 on the 16 held-out digits
    state, manifest = load_package(out)
    assert manifest["version"] == 4 and manifest["config"]["quality"] == 2
    float_state, architecture, _ = load_state_dict(bundled_mlp / "model.safetensors")
    held_out = Request(images=read_inputs(digits).images[-16:])
    assert Calibration({"architecture": architecture}, float_state, held_out, "kl")(state) == pytest.approx(
        end, rel=1e-4
    )


def test_inputs_the_handler_refuses_get_one_line_and_nothing_is_written(bundled_mlp, tmp_path, capsys):
    text = tmp_path / "lines.txt"
    text.write_text("a sentence\nanother one\n")
    out = tmp_path / "never.jpw"
    assert main(["finetune", str(bundled_mlp / "model.safetensors"), "--data", str(text), "--out", str(out)]) == 1
    assert "do not fit the model's handler" in capsys.readouterr().err and not out.exists()
    assert (
        main(
            [
                "finetune",
                str(bundled_mlp / "model.safetensors"),
                "--data",
                str(text),
                "--report",
                str(tmp_path),
                "--out",
                str(out),
            ]
        )
        == 1
    )
    assert "go with --data-dir" in capsys.readouterr().err


def test_a_learning_rate_that_only_hurts_is_refused(bundled_mlp, digits):
    state, architecture, _ = load_state_dict(bundled_mlp / "model.safetensors")
    images = read_inputs(digits).images
    config = pin(state, EncodeConfig(quality=50, qtable="flat", lossless_below=256))
    with pytest.raises(FinetuneError, match="lower the learning rate"):
        distill(
            state,
            {"architecture": architecture},
            Request(images=images[:64]),
            Request(images=images[64:]),
            config,
            epochs=2,
            lr=1.0,
            patience=1,
        )


MINILM = ROOT / "models" / "all-minilm-l6-v2" / "model.safetensors"


@pytest.mark.skipif(
    not MINILM.is_file(), reason="the pretrained models are not imported: `make pretrained` (make test does it)"
)
def test_a_text_file_distills_an_embedding_model_on_its_cosine(tmp_path, capsys):
    """MiniLM on benchmarks/data/sentences.txt: 32 sentences trained on, 8 held out, 2 epochs."""
    out = tmp_path / "minilm.jpw"
    argv = [
        "finetune",
        str(MINILM),
        "--data",
        str(ROOT / "benchmarks" / "data" / "sentences.txt"),
        "--quality",
        "90",
        "--ranges",
        "row",
        "--lossless-below",
        "4096",
        "--epochs",
        "2",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    start, end = (float(v) for v in re.findall(r"1 - cosine (\d+\.\d+)", printed))
    assert end < 0.9 * start, printed  # about 0.0031 -> 0.0023
    assert load_package(out)[1]["handler"]["name"] == "text-embedding"
