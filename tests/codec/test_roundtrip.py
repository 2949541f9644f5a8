from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as safetensors_load

from jpegweights.codec import EncodeConfig, decode, encode, load_manifest, snr_db
from jpegweights.codec.container import read

FLOATS = [torch.float32, torch.float16, torch.bfloat16]


def smooth(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 1, max(2, rows // 16), max(2, cols // 16), generator=g)
    return torch.nn.functional.interpolate(coarse, size=(rows, cols), mode="bilinear", align_corners=False)[0, 0]


shapes = st.lists(st.integers(1, 70), min_size=1, max_size=4)


def jpeg_rms_bound(entry: dict, scale: float) -> float:
    """An upper bound on the RMS error of a JPEG-coded tensor, from its own table.

    Each DCT coefficient is off by at most half its step, and the DCT is orthonormal, so a
    block's RMS error in grey levels is at most sqrt(mean(step^2)) / 2. Add half a level for
    quantizing to 8 bits, one for libjpeg's integer IDCT (the format's tolerance) and half
    for its integer forward DCT; clamping to 0..255 only ever reduces the error.
    """
    from jpegweights.codec import jpeg

    steps = torch.tensor(jpeg.qtable(entry["qtable"], entry["quality"]), dtype=torch.float64)
    return scale * (float(steps.pow(2).mean().sqrt()) / 2 + 2.0)


def dtype_slack(t: torch.Tensor) -> float:
    """Rounding to the tensor's own dtype, and float16 scales and offsets (to 0.1%)."""
    eps = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[t.dtype]
    return (eps + 1e-3) * float(t.float().abs().max()) + 1e-30


def check_round_trip(t: torch.Tensor, cfg: EncodeConfig) -> None:
    """Decode(encode(t)) keeps shape and dtype, and its error is within the coding's bound."""
    data = encode({"t": t}, cfg)
    out = decode(data)["t"]
    assert out.shape == t.shape and out.dtype == t.dtype
    entry = load_manifest(data)["tensors"]["t"]
    if entry["coding"] == "raw":
        assert torch.equal(out, t)
        return
    x, y = t.double(), out.double()
    lo, hi = float(x.min()), float(x.max())
    slack = dtype_slack(t)
    err = (y - x).abs()
    per_row = entry["coding"] == "int8" or cfg.ranges == "row"
    spans = (
        (x.reshape(len(x), -1).amax(1) - x.reshape(len(x), -1).amin(1))
        if per_row and x.dim()
        else torch.tensor([hi - lo])
    )
    scale = float(spans.max()) / 255
    assert float(err.max()) <= (hi - lo) + slack, "never leaves the tensor's value range"
    if entry["coding"] == "int8":
        assert float(err.max()) <= scale / 2 + slack
    else:
        rms = float(err.pow(2).mean().sqrt())
        assert rms <= jpeg_rms_bound(entry, scale) + slack, (rms, jpeg_rms_bound(entry, scale))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=shapes,
    dtype=st.sampled_from(FLOATS),
    coding=st.sampled_from(["auto", "jpeg", "int8", "raw"]),
    seed=st.integers(0, 2**16),
    quality=st.integers(1, 100),
    kind=st.sampled_from(["normal", "normal", "constant", "zeros"]),
)
# Found by hypothesis (issue 9): Pillow 13 could not encode a short, wide noise-like atlas with
# optimize=True; a constant decoded 1.0 off at quality <= 5; all zeros raised a math domain error.
@example(shape=[2, 20000], dtype=torch.float32, coding="auto", seed=0, quality=90, kind="normal")
@example(shape=[2, 15428], dtype=torch.float32, coding="jpeg", seed=1, quality=100, kind="normal")
@example(shape=[3, 7], dtype=torch.float32, coding="jpeg", seed=0, quality=5, kind="constant")
@example(shape=[3, 7], dtype=torch.float32, coding="jpeg", seed=0, quality=1, kind="constant")
@example(shape=[8, 8], dtype=torch.float32, coding="jpeg", seed=0, quality=20, kind="zeros")
def test_float_round_trip_keeps_shape_dtype_and_bounds_error(shape, dtype, coding, seed, quality, kind):
    g = torch.Generator().manual_seed(seed)
    t = {
        "normal": torch.randn(*shape, generator=g) * 0.1,
        "constant": torch.full(shape, 0.154),
        "zeros": torch.zeros(shape),
    }[kind].to(dtype)
    check_round_trip(t, EncodeConfig(quality=quality, coding=coding, lossless_below=0, raw_dtype="same"))


AWKWARD = {
    "1xN": torch.randn(1, 5000, generator=torch.Generator().manual_seed(1)),
    "Nx1": torch.randn(5000, 1, generator=torch.Generator().manual_seed(2)),
    "2x65500": torch.randn(2, 65500, generator=torch.Generator().manual_seed(3)),
    "constant": torch.full((40, 70), -3.25),
    "zeros": torch.zeros(64, 64),
    "single value": torch.full((1, 1), 0.154),
    "huge": torch.randn(50, 80, generator=torch.Generator().manual_seed(4)) * 1e30,
    "tiny": torch.randn(50, 80, generator=torch.Generator().manual_seed(5)) * 1e-30,
    "float32 limits": torch.tensor([[3.0e38, -3.0e38, 1.0, 0.0] * 16] * 4),
    "empty rows": torch.zeros(0, 5),
    "empty columns": torch.zeros(5, 0),
    "empty middle": torch.zeros(3, 0, 4),
}


@pytest.mark.parametrize("name", sorted(AWKWARD))
@pytest.mark.parametrize("quality", [1, 5, 20, 50, 90, 100])
def test_awkward_tensors_round_trip_within_bounds_at_every_quality(name, quality):
    check_round_trip(AWKWARD[name], EncodeConfig(quality=quality, coding="jpeg", lossless_below=0, raw_dtype="same"))


def test_constants_decode_exactly_at_any_quality():
    for quality in (1, 3, 5):
        t = torch.full((16, 16), 0.25)  # exact in float16, so offsets hold it exactly
        assert torch.equal(
            decode(encode({"t": t}, EncodeConfig(quality=quality, coding="jpeg", lossless_below=0)))["t"], t
        )


def test_values_near_the_float32_limit_are_stored_raw():
    t = AWKWARD["float32 limits"]
    assert (
        load_manifest(encode({"t": t}, EncodeConfig(coding="jpeg", lossless_below=0)))["tensors"]["t"]["coding"]
        == "raw"
    )


def test_raw_float16_halves_small_float_tensors_and_widens_them_back():
    state = {
        "bias": torch.linspace(-3, 3, 100),
        "var": torch.linspace(1e-6, 2.0, 100, dtype=torch.float64),
        "huge": torch.tensor([1e6, -2.0]),  # float16 cannot hold it: kept in float32
        "steps": torch.tensor([7], dtype=torch.int64),
        "half": torch.ones(8, dtype=torch.bfloat16),
    }
    data = encode(state, EncodeConfig(raw_dtype="float16", compact=False))
    stored, manifest = read(data)
    assert manifest["version"] == 3
    assert {k: v.dtype for k, v in stored.items()} == {
        "bias": torch.float16,
        "var": torch.float16,
        "huge": torch.float32,
        "steps": torch.int64,
        "half": torch.bfloat16,
    }
    out = decode(data)
    for name, t in state.items():
        assert out[name].dtype == t.dtype and out[name].shape == t.shape
        expected = t.to(torch.float16).to(t.dtype) if name in ("bias", "var") else t
        assert torch.equal(out[name], expected), name
    assert (
        len(data) < len(encode(state, EncodeConfig(raw_dtype="same", compact=False))) - 300
    )  # two 100-value tensors at 2 bytes less each


def test_quality_90_brings_a_gaussian_matrix_back_within_3_percent_with_the_flat_table():
    """What quality means on a weight matrix with no spatial structure (an embedding table):
    measured 2.24% relative error under import's settings; docs/codec.md#deep-networks."""
    x = torch.randn(2048, 384, generator=torch.Generator().manual_seed(0))
    y = decode(encode({"w": x}, EncodeConfig(quality=90, qtable="flat", ranges="row")))["w"]
    assert float((x - y).norm() / x.norm()) < 0.03


def test_outliers_are_kept_apart_and_the_rest_gets_finer_steps():
    x = torch.randn(256, 512, generator=torch.Generator().manual_seed(0))
    x[3, 7], x[100, 2] = 40.0, -55.0
    plain, apart = (
        encode({"w": x}, EncodeConfig(quality=90, qtable="flat", ranges="row", outliers=k)) for k in (None, 3.0)
    )
    stored, manifest = read(apart)
    entry = manifest["tensors"]["w"]
    index = stored[entry["outliers"]]
    assert index.dtype == torch.int32 and {3 * 512 + 7, 100 * 512 + 2} <= set(index.tolist())
    y = decode(apart)["w"]
    assert y[3, 7] == 40.0 and y[100, 2] == -55.0
    error = lambda data: float((decode(data)["w"] - x).norm() / x.norm())  # noqa: E731
    assert error(apart) < 0.85 * error(plain)  # measured 0.0216 against 0.0280
    assert "outliers" not in read(plain)[1]["tensors"]["w"] and "outliers" not in read(plain)[1]["config"]


def test_version_2_packages_still_decode():
    data = (
        Path(__file__).parent / "golden" / "version2-mnist-mlp.jpw"
    ).read_bytes()  # the MNIST MLP's package as version 2 wrote it
    assert load_manifest(data)["version"] == 2
    assert decode(data)["1.weight"].shape == (512, 784)


@settings(max_examples=25, deadline=None)
@given(
    shape=shapes,
    dtype=st.sampled_from([torch.int64, torch.int32, torch.uint8, torch.int8, torch.bool]),
    seed=st.integers(0, 2**16),
)
def test_integer_and_bool_tensors_are_stored_exactly(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, 2 if dtype == torch.bool else 100, shape, generator=g).to(dtype)
    out = decode(encode({"t": t}, EncodeConfig(coding="jpeg")))["t"]
    assert out.dtype == dtype and torch.equal(out, t)


def test_conv_and_embedding_weights_round_trip_with_high_snr_at_high_quality():
    state = {
        "conv.weight": smooth(64, 3 * 5 * 5).reshape(64, 3, 5, 5),
        "emb.weight": smooth(1000, 64, seed=1),
        "norm.weight": torch.ones(64),
    }
    out = decode(encode(state, EncodeConfig(quality=95, coding="jpeg")))
    for name, t in state.items():
        assert out[name].shape == t.shape
        assert snr_db(t, out[name]) > 25, name


@pytest.mark.parametrize("qtable", ["standard", "flat"])
def test_error_falls_as_quality_rises(qtable):
    t = smooth(256, 512) + 0.01 * torch.randn(256, 512, generator=torch.Generator().manual_seed(3))
    snrs, sizes = [], []
    for q in (5, 20, 50, 80, 95):
        data = encode({"w": t}, EncodeConfig(quality=q, coding="jpeg", qtable=qtable))
        snrs.append(snr_db(t, decode(data)["w"]))
        sizes.append(len(data))
    assert snrs == sorted(snrs) and snrs[-1] > snrs[0] + 10, snrs
    assert sizes == sorted(sizes), sizes


def test_encoding_is_deterministic():
    state = {"a": smooth(300, 784), "b": torch.randn(10, 512), "c": torch.arange(7)}
    assert encode(state) == encode(state)
    assert encode(state, EncodeConfig(quality=33)) == encode(state, EncodeConfig(quality=33))


def test_package_is_a_valid_safetensors_file():
    state = {"w": smooth(128, 784), "b": torch.zeros(128)}
    data = encode(
        state, EncodeConfig(compact=False)
    )  # the packed container (the default) is safetensors too, its tensors packed
    loaded = safetensors_load(data)
    assert torch.equal(loaded["b"].float(), state["b"])
    assert any(k.startswith("w/jpeg/") and v.dtype == torch.uint8 for k, v in loaded.items())


def test_cpu_decoder_matches_torchvision_within_one_grey_level():
    """The CPU path (Pillow) against torchvision's decoder, the library of the CUDA path: the
    format's decoder tolerance is one grey level."""
    from torchvision.io import ImageReadMode, decode_jpeg

    from jpegweights.codec import jpeg

    t = smooth(500, 784) + 0.02 * torch.randn(500, 784, generator=torch.Generator().manual_seed(0))
    stored, manifest = read(encode({"w": t}, EncodeConfig(coding="jpeg", quality=40)))
    for atlas in manifest["tensors"]["w"]["atlases"]:
        stream = stored[atlas["key"]]
        ours = jpeg.decode(stream).numpy().astype(int)
        reference = decode_jpeg(stream, mode=ImageReadMode.GRAY)[0].numpy().astype(int)
        assert ours.shape == reference.shape == (atlas["height"], atlas["width"])
        assert np.abs(ours - reference).max() <= 1


def test_rows_layout_places_every_tile_back_in_its_row():
    # each row is a distinct constant, so any misplaced tile shows up as a wrong row value
    rows = torch.linspace(-1, 1, 700)[:, None].expand(700, 784).contiguous()
    out = decode(encode({"w": rows}, EncodeConfig(coding="jpeg", layout="rows:28x28", quality=95, ranges="row")))["w"]
    assert torch.allclose(out, rows, atol=0.02)


def test_atlases_split_at_the_pixel_budget_and_the_jpeg_side_limit():
    t = smooth(512, 512)
    man = load_manifest(encode({"w": t}, EncodeConfig(coding="jpeg", layout="matrix", max_atlas_pixels=64 * 512)))
    atlases = man["tensors"]["w"]["atlases"]
    assert len(atlases) == 8 and all(a["height"] * a["width"] <= 64 * 512 for a in atlases)
    wide = torch.zeros(2, 70000)
    wide[:, ::2] = 1.0
    man = load_manifest(encode({"w": wide}, EncodeConfig(coding="jpeg", layout="matrix")))
    assert all(a["width"] <= 65500 for a in man["tensors"]["w"]["atlases"])
    assert sum(a["width"] for a in man["tensors"]["w"]["atlases"]) == 70000
    # libjpeg refuses sides over 65,500 although the format allows 65,535
    edge = torch.randn(1, 65520)
    out = decode(encode({"w": edge}, EncodeConfig(coding="jpeg", layout="matrix", quality=90)))["w"]
    assert out.shape == edge.shape


def test_per_tensor_quality_override_by_name_and_glob():
    state = {"enc.0.weight": smooth(256, 256), "enc.1.weight": smooth(256, 256, 1), "head.weight": smooth(256, 256, 2)}
    cfg = EncodeConfig(quality=20, quality_for={"enc.*": 80, "head.weight": 5}, coding="jpeg")
    tensors = load_manifest(encode(state, cfg))["tensors"]
    assert [tensors[k]["quality"] for k in state] == [80, 80, 5]


def test_auto_coding_choices_are_recorded_per_tensor():
    state = {
        "bias": torch.randn(512),  # 1-D: raw
        "small": torch.randn(16, 16),  # under lossless_below: raw
        "head": torch.randn(10, 512),  # under int8_below: int8
        "body": smooth(512, 784),  # jpeg
        "ids": torch.arange(100_000).reshape(100, 1000),  # integer: raw
    }
    tensors = load_manifest(encode(state))["tensors"]
    assert {k: v["coding"] for k, v in tensors.items()} == {
        "bias": "raw",
        "small": "raw",
        "head": "int8",
        "body": "jpeg",
        "ids": "raw",
    }
    assert tensors["body"]["qtable"] == "flat" and tensors["body"]["quality"] == 90


def test_auto_qtable_picks_flat_for_unstructured_and_standard_for_smooth_matrices():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(256, 400, generator=g)
    tensors = load_manifest(
        encode({"noise": noise, "smooth": smooth(256, 400)}, EncodeConfig.preset("seed", coding="jpeg"))
    )["tensors"]
    assert tensors["noise"]["qtable"] == "flat"
    assert tensors["smooth"]["qtable"] == "standard"


def test_bundled_mlp_at_quality_20_is_25x_smaller_within_0_3_points(bundled_mlp, mnist_test):
    """The seed experiment's claim, on the bundled float model (never retrained here): its
    seed-preset package at quality 20, re-encoded now, is >= 25x smaller than float32 and within
    0.3 points; the bundled package is the same bytes. The measured drop is 0.14 points."""
    from safetensors import safe_open

    from jpegweights.handlers import build
    from jpegweights.training.train import accuracy

    with safe_open(str(bundled_mlp / "model.safetensors"), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
        spec = json.loads(f.metadata()["architecture"])
    data = encode(state, EncodeConfig.preset("seed"), architecture=spec)
    assert data == (bundled_mlp / "model.jpw").read_bytes()
    float_acc = accuracy(build(spec, state).eval(), spec, mnist_test)
    jpw_acc = accuracy(build(spec, decode(data)).eval(), spec, mnist_test)
    float32_bytes = sum(t.numel() * 4 for t in state.values())
    assert float32_bytes / len(data) >= 25, (float32_bytes, len(data))
    assert float_acc - jpw_acc <= 0.003, (float_acc, jpw_acc)


def test_large_tensors_decode_into_huge_page_memory_that_behaves_as_any_tensor(monkeypatch):
    """From 2 MiB a CPU decode advises the memory it writes for huge pages (fewer page faults);
    the values must be those of the plain path, and the tensor an ordinary one."""
    from safetensors.torch import save as safetensors_save

    from jpegweights.codec import buffers

    import sys

    if sys.platform == "linux":  # libc's madvise is found, so the advice is given
        assert buffers.libc_madvise() is not None
    g = torch.Generator().manual_seed(0)
    state = {"big": torch.randn(1024, 1024, generator=g), "small": torch.randn(64, 64, generator=g)}
    data = encode(state, EncodeConfig(coding="jpeg", quality=50))
    huge = decode(data)
    monkeypatch.setattr(buffers, "HUGE_PAGE", 1 << 62)
    plain = decode(data)
    assert all(torch.equal(huge[k], plain[k]) for k in state)
    assert huge["big"].is_contiguous() and huge["big"].shape == (1024, 1024)
    huge["big"].add_(1)  # writable, in place
    assert torch.equal(huge["big"], plain["big"] + 1)
    assert torch.equal(safetensors_load(safetensors_save(huge))["big"], huge["big"])
    assert huge["big"].resize_(2048, 1024).shape == (2048, 1024)  # torch's own, resizable storage
