from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load as safetensors_load

from codec import EncodeConfig, decode, encode, load_manifest, snr_db
from codec.container import read

FLOATS = [torch.float32, torch.float16, torch.bfloat16]


def smooth(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 1, max(2, rows // 16), max(2, cols // 16), generator=g)
    return torch.nn.functional.interpolate(coarse, size=(rows, cols), mode="bilinear", align_corners=False)[0, 0]


shapes = st.lists(st.integers(1, 70), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes, dtype=st.sampled_from(FLOATS), coding=st.sampled_from(["auto", "jpeg", "int8", "raw"]), seed=st.integers(0, 2**16), quality=st.integers(1, 100))
def test_float_round_trip_keeps_shape_dtype_and_bounds_error(shape, dtype, coding, seed, quality):
    g = torch.Generator().manual_seed(seed)
    t = (torch.randn(*shape, generator=g) * 0.1).to(dtype)
    cfg = EncodeConfig(quality=quality, coding=coding, lossless_below=0)
    out = decode(encode({"t": t}, cfg))["t"]
    assert out.shape == t.shape and out.dtype == t.dtype
    entry = load_manifest(encode({"t": t}, cfg))["tensors"]["t"]
    lo, hi = float(t.float().min()), float(t.float().max())
    if entry["coding"] == "raw":
        assert torch.equal(out, t)
    elif entry["coding"] == "int8":  # half a step per row, plus the dtype's own rounding
        step = (hi - lo) / 255
        assert float((out.float() - t.float()).abs().max()) <= step / 2 + 1e-2 * max(abs(lo), abs(hi)) + 1e-6
    else:  # JPEG never leaves the tensor's value range (up to the dtype's rounding)
        margin = 1e-2 * max(abs(lo), abs(hi)) + 1e-6
        assert lo - margin <= float(out.float().min()) and float(out.float().max()) <= hi + margin


@settings(max_examples=25, deadline=None)
@given(shape=shapes, dtype=st.sampled_from([torch.int64, torch.int32, torch.uint8, torch.int8, torch.bool]), seed=st.integers(0, 2**16))
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
    data = encode(state)
    loaded = safetensors_load(data)
    assert torch.equal(loaded["b"], state["b"])
    assert any(k.startswith("w/jpeg/") and v.dtype == torch.uint8 for k, v in loaded.items())


def test_torchvision_decode_matches_pillow_within_one_grey_level():
    from codec import jpeg

    t = smooth(500, 784) + 0.02 * torch.randn(500, 784, generator=torch.Generator().manual_seed(0))
    stored, manifest = read(encode({"w": t}, EncodeConfig(coding="jpeg", quality=40)))
    for atlas in manifest["tensors"]["w"]["atlases"]:
        stream = stored[atlas["key"]]
        ours = jpeg.decode(stream).numpy().astype(int)
        reference = np.asarray(Image.open(io.BytesIO(stream.numpy().tobytes())).convert("L")).astype(int)
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
    assert {k: v["coding"] for k, v in tensors.items()} == {"bias": "raw", "small": "raw", "head": "int8", "body": "jpeg", "ids": "raw"}
    assert tensors["body"]["qtable"] in ("standard", "flat") and tensors["body"]["quality"] == 20


def test_auto_qtable_picks_flat_for_unstructured_and_standard_for_smooth_matrices():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(256, 400, generator=g)
    tensors = load_manifest(encode({"noise": noise, "smooth": smooth(256, 400)}, EncodeConfig(coding="jpeg")))["tensors"]
    assert tensors["noise"]["qtable"] == "flat"
    assert tensors["smooth"]["qtable"] == "standard"


def test_seed_mlp_at_quality_20_is_25x_smaller_within_0_3_points(trained_mlp, mnist_test):
    from training.train import accuracy

    model, spec = trained_mlp
    state = {k: v.clone() for k, v in model.state_dict().items()}
    float_acc = accuracy(model, spec, mnist_test)
    data = encode(state, EncodeConfig(quality=20), architecture=spec)
    float32_bytes = sum(t.numel() * 4 for t in state.values())
    model.load_state_dict(decode(data))
    jpw_acc = accuracy(model, spec, mnist_test)
    model.load_state_dict(state)
    assert float32_bytes / len(data) >= 25, (float32_bytes, len(data))
    assert float_acc - jpw_acc <= 0.003, (float_acc, jpw_acc)
    assert math.isclose(float_acc, accuracy(model, spec, mnist_test))
