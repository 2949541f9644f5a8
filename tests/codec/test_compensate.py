"""Error compensation (``encode(..., hessians=)``): each 8 columns' JPEG error corrected in the
columns after, so that a matrix's outputs on its inputs move less; and a lookup table's rows
coded by how often each is looked up."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jpegweights.codec import ConfigError, EncodeConfig, decode, encode, jpeg
from jpegweights.codec.compensate import round_trip
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
    strips = np.hstack([round_trip(image[:, b : b + 8], table) for b in range(0, 29, 8)])
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
        (
            torch.eye(96).index_put((torch.tensor([0, 1]), torch.tensor([1, 0])), torch.tensor([3.0, 3.0])),
            "not positive semi-definite$",
        ),
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


# ---- a lookup table's row weights (``hessians={name: (rows,) vector}``)


@pytest.fixture(scope="module")
def table() -> tuple[torch.Tensor, torch.Tensor]:
    """A 2048×64 lookup table whose first 205 rows are looked up 100 times as often as the rest."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(2048, 64, generator=g), torch.where(torch.arange(2048) < 205, 100.0, 1.0).double()


def weighted_error(w: torch.Tensor, weights: torch.Tensor, data: bytes) -> float:
    return float((weights[:, None] * (decode(data)["w"] - w).double() ** 2).sum())


def test_row_weights_spend_the_bytes_on_the_rows_used_most(table):
    w, weights = table
    plain = encode({"w": w}, CONFIG.at_quality(70))
    weighted = encode({"w": w}, CONFIG.at_quality(95), hessians={"w": weights})
    assert len(weighted) < len(plain)
    ratio = weighted_error(w, weights, weighted) / weighted_error(w, weights, plain)
    assert ratio < 0.75, ratio  # measured 0.62 (79,379 against 86,618 bytes)


def test_rows_never_looked_up_cost_next_to_nothing(table):
    w, _ = table
    weights = torch.zeros(2048, dtype=torch.float64)
    weights[:100] = 1
    plain, weighted = encode({"w": w}, CONFIG), encode({"w": w}, CONFIG, hessians={"w": weights})
    assert len(weighted) < 0.4 * len(plain)  # measured 0.22
    used = [float((decode(d)["w"][:100] - w[:100]).square().mean()) for d in (plain, weighted)]
    assert used[1] < 1.3 * used[0], used  # the rows looked up keep about their steps: measured 1.06
    assert bool(torch.isfinite(decode(weighted)["w"]).all())


def test_row_weights_are_dropped_where_the_coarser_codes_could_overflow_the_dtype(table):
    w, weights = table
    big = (w * 1000).half()  # 51 times its largest value is past float16's range
    assert encode({"w": big}, CONFIG, hessians={"w": weights}) == encode({"w": big}, CONFIG)


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        (torch.ones(2047), r"float \(2048,\) tensor"),
        (torch.ones(2048, dtype=torch.int64), r"float \(2048,\) tensor"),
        (torch.full((2048,), float("nan")), "finite and non-negative"),
        (-torch.ones(2048), "finite and non-negative"),
        (torch.zeros(2048), "not all zero"),
    ],
)
def test_bad_row_weights_are_refused_naming_the_tensor(table, weights, match):
    w, _ = table
    with pytest.raises(InvalidTensorError, match=match) as info:
        encode({"w": w}, CONFIG, hessians={"w": weights})
    assert info.value.tensor == "w"
