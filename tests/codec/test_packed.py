"""The packed container (format version 4, ``EncodeConfig(compact=True)``): the same tensors as
the plain container, in fewer bytes. Its crafted attacks are in attacks/codec (``packed_*``)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load as safetensors_load

from jpegweights.codec import EncodeConfig, decode, encode, load_manifest
from jpegweights.compressed import load_matrices
from jpegweights.codec.container import DATA, INDEX, read
from tests.conftest import ROOT

from .helpers import header


def state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.randn(1, 1, 8, 16, generator=g), size=(64, 128), mode="bilinear")[
        0, 0
    ]
    return {"w": smooth, "rows": torch.randn(32, 256, generator=g), "b": torch.randn(64, generator=g)}


@pytest.mark.parametrize("ranges", ["tensor", "row"])
def test_compact_packages_decode_to_the_same_tensors_in_fewer_bytes(ranges):
    config = EncodeConfig(quality=30, coding="jpeg", ranges=ranges, raw_dtype="float16", compact=False)
    plain, packed = encode(state(), config), encode(state(), replace(config, compact=True))
    assert load_manifest(plain)["version"] == 3 and load_manifest(packed)["version"] == 4
    assert len(packed) < len(plain) - 300, (len(packed), len(plain))
    a, b = decode(plain), decode(packed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    stored, manifest = read(packed)
    assert manifest["config"]["compact"] is True and "compact" not in load_manifest(plain)["config"]
    # a range shared by the whole tensor is stored once; per-row ranges stay per row
    assert stored["w/scale"].shape == ((1,) if ranges == "tensor" else (64,))


def test_a_compact_package_is_plain_safetensors_whose_header_is_two_tensors():
    packed = encode(state(), EncodeConfig(compact=True))
    assert set(header(packed)) == {"__metadata__", INDEX, DATA}
    assert set(safetensors_load(packed)) == {INDEX, DATA}


@pytest.mark.parametrize("package, target", [("model-ft.jpw", 30), ("model-target-0.3.jpw", 15)])
def test_the_bundled_cnn_packages_meet_their_ratios_in_the_compact_container(package, target):
    """``make report`` writes both compact: the fine-tuned CNN is 37x (23.5x in version 3, whose
    header alone was 4,328 of its 10,532 bytes), the --target-drop one 15.0x (12.1x)."""
    data = (ROOT / "models" / "mnist-cnn" / package).read_bytes()
    float32 = sum(t.numel() * 4 for t in decode(data).values())
    assert load_manifest(data)["version"] == 4 and float32 / len(data) >= target


def test_compressed_domain_reads_a_range_stored_once():
    t = state()["w"]
    config = EncodeConfig(quality=50, coding="jpeg", qtable="flat", layout="matrix", ranges="tensor")
    plain, packed = (encode({"w": t}, replace(config, compact=compact)) for compact in (False, True))
    assert read(packed)[0]["w/scale"].shape == (1,)
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(1))
    products = [load_matrices(data, ["w"])[0]["w"].matmul(x) for data in (plain, packed)]
    assert torch.equal(*products)
