"""Calibration that transfers: inputs in kinds, the bundled kinds of text as a floor, the target
met on the kind it is worst on, and the package measured on a kind it never saw. The measured
figures on MiniLM and MPNet are in docs/codec.md; here a tiny BERT keeps it quick."""

from __future__ import annotations

import pytest
import torch

from jpegweights.cli.main import main
from jpegweights.handlers import Request
from jpegweights.handlers.errors import CalibrationError
from jpegweights.pipeline import compress
from jpegweights.pipeline.calibrate import BUNDLED, Calibration, bundled, combined
from tests.handlers.tiny_text import WORDS, tiny_text

KINDS = ["conversation", "instructions", "news", "reviews", "science", "software"]


def texts(seed: int, n: int = 12) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS) - 1, (6,), generator=g)) for _ in range(n)]


def test_six_kinds_of_text_are_bundled_and_nothing_for_other_inputs():
    kinds = bundled("text")
    assert sorted(kinds) == KINDS and all(len(r.text) >= 20 for r in kinds.values())
    assert len({t for r in kinds.values() for t in r.text}) == sum(len(r.text) for r in kinds.values())  # no repeats
    assert bundled("images") == {} and bundled("inputs") == {}
    assert sorted(p.stem for p in (BUNDLED / "text").iterdir()) == KINDS


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
