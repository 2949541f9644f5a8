"""Encode settings: one set of defaults (the served settings), named presets, settings resolved
once per tensor, and stored configs read back as they were written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jpegweights.codec import PRESETS, ConfigError, EncodeConfig, decode, encode, load_manifest
from jpegweights.codec.config import TensorSettings


def relative_error(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x.double() - y.double()).norm() / x.double().norm())


def test_quality_90_by_default_brings_a_gaussian_bf16_matrix_back_within_5_percent():
    """The defaults are the served settings: a Gaussian bf16 matrix at quality 90 comes back at
    2.3% relative error (the seed's settings gave 13.7% at the same quality)."""
    x = torch.randn(512, 512, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    y = decode(encode({"w": x}, EncodeConfig(quality=90)))["w"]
    assert y.dtype == torch.bfloat16 and relative_error(x, y) < 0.05


def test_the_defaults_are_the_default_preset_and_the_seed_is_a_preset():
    assert EncodeConfig() == PRESETS["default"] == EncodeConfig.preset("default")
    d = EncodeConfig()
    assert (d.quality, d.qtable, d.ranges, d.raw_dtype, d.compact) == (90, "flat", "row", "float16", True)
    seed = EncodeConfig.preset("seed", quality=30)
    assert (seed.quality, seed.qtable, seed.ranges, seed.raw_dtype, seed.compact) == (
        30,
        "auto",
        "tensor",
        "same",
        False,
    )
    assert PRESETS["seed"].quality == 20  # the preset itself is unchanged by overrides


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("fast", {}, "unknown preset 'fast'"),
        ("seed", {"qualty": 5}, "unknown EncodeConfig fields"),
        ("seed", {"quality": 0}, "quality must be"),
    ],
)
def test_a_bad_preset_or_override_is_a_config_error(name, overrides, message):
    with pytest.raises(ConfigError, match=message):
        EncodeConfig.preset(name, **overrides)


def test_settings_are_resolved_once_per_tensor_with_overrides_by_name_and_glob():
    cfg = EncodeConfig(
        quality=50, quality_for={"*.bias": 95}, coding_for={"head.*": "int8"}, layout_for={"fc.weight": "matrix"}
    )
    assert cfg.for_tensor("fc.weight") == TensorSettings(
        quality=50, coding="auto", qtable="flat", layout="matrix", ranges="row", raw_dtype="float16",
        clip_sigma=None, outliers=None, clamp_free=False, max_atlas_pixels=1 << 20, lossless_below=4096,
        int8_below=16384, structure_ratio=0.4,
    )  # fmt: skip
    assert (cfg.for_tensor("head.bias").quality, cfg.for_tensor("head.bias").coding) == (95, "int8")


@pytest.mark.parametrize(
    "config", [EncodeConfig(), PRESETS["seed"], EncodeConfig(outliers=3.0, clamp_free=True, compact=False)]
)
def test_a_stored_config_reads_back_as_written(config):
    data = encode({"w": torch.randn(64, 128, generator=torch.Generator().manual_seed(0))}, config)
    assert EncodeConfig.from_dict(load_manifest(data)["config"]) == config


def test_a_config_stored_before_the_new_defaults_keeps_its_meaning():
    """Fields a package's config leaves out meant what they meant when it was written: the plain
    container, raw tensors as they were, no outliers apart, clamping allowed."""
    old = load_manifest((Path(__file__).parent / "golden" / "version2-mnist-mlp.jpw").read_bytes())["config"]
    assert "compact" not in old and "raw_dtype" not in old
    assert EncodeConfig.from_dict(old) == PRESETS["seed"]
