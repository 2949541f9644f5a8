"""Calibration that transfers: inputs in kinds, the bundled kinds of text and of images as a
floor, the target met on the kind it is worst on, and the package measured on a kind it never
saw. The measured figures on MiniLM, MPNet and MobileNetV2 are in docs/codec.md; here a tiny
BERT and a tiny SqueezeNet keep it quick."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from jpegweights.cli.main import main
from jpegweights.handlers import Request
from jpegweights.handlers.errors import CalibrationError
from jpegweights.pipeline import compress
from jpegweights.pipeline.calibrate import BUNDLED, Calibration, bundled, combined, read_inputs
from jpegweights.pipeline.models import load_state_dict
from tests.handlers.test_handlers import TINY, image_handler, png, tiny_state
from tests.handlers.tiny_text import WORDS, tiny_text

KINDS = ["conversation", "instructions", "news", "reviews", "science", "software"]
IMAGE_KINDS = ["nature", "objects", "people"]
PHOTOS = Path(__file__).parents[1] / "data" / "photos"


def texts(seed: int, n: int = 12) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS) - 1, (6,), generator=g)) for _ in range(n)]


def test_six_kinds_of_text_and_three_of_photos_are_bundled_and_nothing_for_other_inputs():
    kinds = bundled("text")
    assert sorted(kinds) == KINDS and all(len(r.text) >= 20 for r in kinds.values())
    assert len({t for r in kinds.values() for t in r.text}) == sum(len(r.text) for r in kinds.values())  # no repeats
    assert sorted(p.stem for p in (BUNDLED / "text").iterdir()) == KINDS
    assert bundled("inputs") == {}
    images = bundled("images")
    assert sorted(images) == IMAGE_KINDS
    for kind, request in images.items():
        photos = sorted((BUNDLED / "images" / kind).glob("*.jpg"))
        assert len(request.images) == 6 * len(photos) >= 6  # each photo in its six views
        first = Image.open(io.BytesIO(request.images[0]))
        assert first.size == Image.open(photos[0]).size and first.mode == "RGB"


def test_the_bundled_photos_are_none_of_those_the_benchmarks_hold_out():
    bundled_photos = {p.stem for p in (BUNDLED / "images").glob("*/*.jpg")}
    held_out = {p.stem for p in sorted(PHOTOS.glob("*.jpg"))[1::2]}  # compare.py's held-out photos
    assert len(bundled_photos) == 5 and len(held_out) == 7 and not bundled_photos & held_out


def test_an_image_model_is_measured_on_the_bundled_kinds_of_images_too():
    manifest = {"architecture": TINY, "handler": image_handler()}
    state = tiny_state()
    mine = {"mine": Request(images=[png(size=(40 + i, 50)) for i in range(4)])}
    floored = Calibration(manifest, state, mine, "kl", floor=True, compensate=True)
    assert floored.kinds == ["mine", *IMAGE_KINDS]
    assert floored.labels.count("mine") == 2 and floored.labels.count("people") == 12  # the half measured on
    g = torch.Generator().manual_seed(0)
    noisy = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in state.items() if v.is_floating_point()}
    by_kind = floored.by_kind(noisy)
    assert set(by_kind) == set(floored.kinds) and floored(noisy) == max(by_kind.values()) > 0


def test_a_model_of_grey_digits_gets_no_photos_as_a_floor(bundled_mlp, digits):
    state, architecture, handler = load_state_dict(bundled_mlp / "model.safetensors")
    manifest = {"architecture": architecture, "handler": handler}
    measure = Calibration(manifest, state, read_inputs(digits / "calibrate"), "kl", floor=True)
    assert measure.kinds == ["inputs"] and measure.samples == 60


def test_each_kind_is_cut_in_halves_so_that_each_is_fitted_on_and_measured_on():
    kinds = {
        "a": Request(text=["a1", "a2", "a3", "a4", "a5"]),
        "b": Request(text=["b1", "b2"]),
        "c": Request(text=["c1"]),
    }
    request, labels, fit, own = combined(kinds)
    assert request.text == ["a1", "b1", "a2", "a3", "b2", "c1", "a4", "a5"] and (fit, own) == (3, 8)
    assert labels == ["a", "b", "a", "a", "b", "c", "a", "a"] and set(labels[fit:]) == {"a", "b", "c"}
    request, labels, fit, own = combined(kinds, measured=["b"])  # b: measured on, never fitted
    assert request.text == ["a1", "a2", "a3", "c1", "a4", "a5", "b1", "b2"] and (fit, own) == (2, 6)
    raw = Request(inputs=[[0.0] * 4] * 3)
    assert combined({"x": raw}) == (raw, ["x", "x", "x"], 1, 3)  # one kind of raw arrays, as it is
    with pytest.raises(CalibrationError, match="all be texts or all be images"):
        combined({"a": Request(text=["t"]), "b": Request(inputs=[[0.0]])})


def test_the_distortion_is_that_of_the_worst_kind():
    manifest, state = tiny_text()
    g = torch.Generator().manual_seed(1)
    noisy = {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in state.items() if v.is_floating_point()}
    kinds = {"one": Request(text=texts(1)), "two": Request(text=texts(2))}
    measure = Calibration(manifest, state, kinds, "cosine", compensate=True)
    by_kind = measure.by_kind(noisy)
    assert sorted(by_kind) == ["one", "two"] and measure.samples == 24
    assert measure(noisy) == max(by_kind.values()) > 0
    assert by_kind["one"] != by_kind["two"]
    floored = Calibration(manifest, state, kinds, "cosine", floor=True, compensate=True)
    assert floored.kinds == ["one", "two", *KINDS] and set(floored.by_kind(noisy)) == set(floored.kinds)
    # the bundled kinds are measured on whole and never fitted on: the same second moments (up to
    # float32 rounding: the longer bundled texts pad the batches further)
    pairs = zip(floored.hessians(True).values(), measure.hessians(True).values())
    assert all(torch.allclose(a, b, rtol=1e-4) for a, b in pairs)
    assert floored.labels.count("news") == 24 and floored.labels.count("one") == 6


def test_a_search_meets_its_target_on_every_kind_and_reports_a_held_out_one(tmp_path, capsys):
    manifest, state = tiny_text()
    (tmp_path / "mine.txt").write_text("\n".join(texts(3)))
    (tmp_path / "other.txt").write_text("\n".join(texts(4)))
    result = compress(
        state, data=tmp_path / "mine.txt", target=0.99, metric="cosine", held_out=tmp_path / "other.txt",
        cache_dir=tmp_path / "cache", progress=print, qualities=(95, 60, 20), **manifest,
    )  # fmt: skip
    assert sorted(result.kinds) == sorted(["mine", *KINDS])
    assert all(result.as_fidelity(d) >= 0.99 for d in result.kinds.values())
    assert result.held_out is not None and 0 <= result.held_out < 1
    out = capsys.readouterr().out
    assert "of 7 kind(s)" in out and f"held out, {tmp_path / 'other.txt'}: cosine" in out
    without = compress(
        state, data=tmp_path / "mine.txt", target=0.99, metric="cosine", floor=False,
        cache_dir=tmp_path / "cache", qualities=(95, 60, 20), **manifest,
    )  # fmt: skip
    assert list(without.kinds) == ["mine"]


def test_the_cli_calibrates_on_the_bundled_kinds_alone_and_needs_a_target_for_a_held_out_report(tmp_path, capsys):
    from jpegweights.handlers.importers import Imported, write_folder
    from jpegweights.codec import EncodeConfig

    manifest, state = tiny_text()
    write_folder(Imported(state, manifest["architecture"], manifest["handler"]), tmp_path / "m", EncodeConfig())
    source, out = str(tmp_path / "m" / "model.safetensors"), str(tmp_path / "out.jpw")
    common = ["--cache-dir", str(tmp_path / "cache"), "--qualities", "95,60"]
    assert main(["compress", source, out, "--calibrate", "--min-cosine", "0.99", *common]) == 0
    assert f"of 6 kind(s), {', '.join(KINDS)}" in capsys.readouterr().err
    (tmp_path / "other.txt").write_text("\n".join(texts(5)))
    assert main(["compress", source, out, "--held-out", str(tmp_path / "other.txt"), *common]) == 1
    assert "--held-out measures what a search made" in capsys.readouterr().err
