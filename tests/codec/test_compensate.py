"""Error compensation (``encode(..., hessians=)``): each 8 columns' JPEG error corrected in the
columns after, so that a matrix's outputs on its inputs move less."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jpegweights.codec import ConfigError, EncodeConfig, decode, encode, jpeg
from jpegweights.codec.compensate import _round_trip
from jpegweights.codec.errors import InvalidTensorError

CONFIG = EncodeConfig(quality=50, qtable="flat", ranges="row", layout="matrix", coding="jpeg")


@pytest.fixture(scope="module")
def layer() -> tuple[torch.Tensor, torch.Tensor]:
    """A 64×96 matrix and 2,000 inputs whose 96 features are strongly correlated (as a layer's
    activations are: a few directions carry most of the energy)."""
    g = torch.Generator().manual_seed(0)
    mixing = torch.randn(96, 96, generator=g) * torch.logspace(0, -2, 96)[:, None]
    x = torch.randn(2000, 96, generator=g) @ mixing
    return torch.randn(64, 96, generator=g), x


def output_error(w: torch.Tensor, state: dict[str, torch.Tensor], x: torch.Tensor) -> float:
    return float(((state["w"] - w).double() @ x.double().T).square().sum())


def test_compensation_moves_the_outputs_far_less_for_the_same_bytes(layer):
    w, x = layer
    plain = encode({"w": w}, CONFIG)
    compensated = encode({"w": w}, CONFIG, hessians={"w": x.T @ x})
    ratio = output_error(w, decode(compensated), x) / output_error(w, decode(plain), x)
    assert ratio < 0.5, ratio  # measured 0.23 to 0.26 from q30 to q90
    assert len(compensated) < 1.1 * len(plain)


def test_a_strip_decodes_to_the_pixels_the_whole_image_decodes_to():
    """The premise of the update: JPEG codes each 8×8 block alone, so strips of 8 columns coded
    on their own give exactly the whole image's pixels (odd sizes: edge blocks padded alike)."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(45, 29), dtype=np.uint8)
    table = jpeg.qtable("flat", 60)
    whole = jpeg.decode(torch.frombuffer(bytearray(jpeg.encode(image, table)), dtype=torch.uint8)).numpy()
    strips = np.hstack([_round_trip(image[:, b : b + 8], table) for b in range(0, 29, 8)])
    assert np.array_equal(whole, strips)


def test_no_input_means_no_compensation(layer):
    w, _ = layer
    assert encode({"w": w}, CONFIG, hessians={"w": torch.zeros(96, 96)}) == encode({"w": w}, CONFIG)


@pytest.mark.parametrize(
    ("hessian", "match"),
    [
        (torch.eye(95), r"float \(96, 96\) tensor"),
        (torch.eye(96, dtype=torch.int64), r"float \(96, 96\) tensor"),
        (torch.full((96, 96), float("nan")), "finite and symmetric"),
        (torch.triu(torch.ones(96, 96)), "finite and symmetric"),
        (-torch.eye(96), "negative diagonal"),
        (torch.eye(96).index_put((torch.tensor([0, 1]), torch.tensor([1, 0])), torch.tensor([3.0, 3.0])), "not positive semi-definite$"),
    ],
)
def test_a_bad_second_moment_is_refused_naming_the_tensor(layer, hessian, match):
    w, _ = layer
    with pytest.raises(InvalidTensorError, match=match) as info:
        encode({"w": w}, CONFIG, hessians={"w": hessian})
    assert info.value.tensor == "w"


def test_hessians_for_unknown_tensors_or_with_outliers_are_refused(layer):
    w, x = layer
    with pytest.raises(ConfigError, match="not in the state_dict"):
        encode({"w": w}, CONFIG, hessians={"v": x.T @ x})
    with pytest.raises(ConfigError, match="outliers"):
        encode({"w": w}, EncodeConfig(outliers=3.0), hessians={"w": x.T @ x})
