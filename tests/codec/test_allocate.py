"""``allocate``: per-tensor qualities chosen against a measured distortion (no model here: a
weighted relative error stands in for a model's sensitivity)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from jpegweights.codec import (
    ConfigError,
    EncodeConfig,
    InvalidTensorError,
    TargetError,
    allocate,
    decode,
    encode,
    summarize,
)

CONFIG = EncodeConfig(qtable="flat", ranges="row", raw_dtype="float16")
WEIGHTS = {"sensitive": 100.0, "numb": 1.0}


@pytest.fixture(scope="module")
def state():
    g = torch.Generator().manual_seed(0)
    return {
        "sensitive": torch.randn(128, 256, generator=g),
        "numb": torch.randn(128, 256, generator=g),
        "bias": torch.randn(128, generator=g),  # raw: float16, fixed
    }


def make_distortion(state):
    def distortion(replaced):
        total = 0.0
        for name, weight in WEIGHTS.items():
            if name in replaced:
                x, y = state[name].double(), replaced[name].double()
                total += weight * float(((x - y) ** 2).sum() / (x**2).sum())
        return total

    return distortion


def test_the_choice_meets_the_limit_when_encoded_and_favours_the_sensitive_tensor(state):
    distortion = make_distortion(state)
    found = allocate(state, CONFIG, distortion, limit=0.05)
    data = encode(state, found.config)
    decoded = decode(data)
    measured = distortion(decoded)
    assert measured <= 0.05 and measured == pytest.approx(found.distortion, rel=1e-6)
    q = dict(found.config.quality_for)
    assert set(q) == {"sensitive", "numb"} and q["sensitive"] > q["numb"]
    assert found.nbytes < len(encode(state, replace(CONFIG, quality=98))) * 0.9
    assert found.curves["numb"][0][0] == 98 and all(
        b1 < b0 for (_, b0, _), (_, b1, _) in zip(found.curves["numb"], found.curves["numb"][1:])
    )


def test_a_looser_limit_never_costs_more_bytes(state):
    distortion = make_distortion(state)
    tight, loose = (allocate(state, CONFIG, distortion, limit) for limit in (0.02, 0.2))
    assert loose.nbytes < tight.nbytes and loose.distortion <= 0.2


def test_an_impossible_target_says_the_best_reachable_and_stops(state):
    calls = []

    def distortion(replaced):
        calls.append(1)
        return make_distortion(state)(replaced)

    with pytest.raises(TargetError, match="unreachable.*quality 98.*over the limit 1e-09") as info:
        allocate(state, CONFIG, distortion, limit=1e-9)
    assert info.value.best > 1e-9 and len(calls) == 1  # measured once at the top, no search


def test_a_tensor_coded_int8_at_the_top_quality_is_still_searched():
    # Uniform values: int8 dominates the q98 JPEG (fewer bytes, less error), lower qualities are
    # JPEG and smaller. Such a tensor was once left at int8, its top quality's coding.
    g = torch.Generator().manual_seed(0)
    state = {"uniform": torch.rand(128, 256, generator=g)}
    found = allocate(
        state,
        CONFIG,
        lambda r: float(((r["uniform"] - state["uniform"]) ** 2).sum() / (state["uniform"] ** 2).sum()) if r else 0.0,
        limit=1e-3,
    )
    assert [q for q, _, _ in found.curves["uniform"]][:2] == [98, 95]
    (row,) = summarize(encode(state, found.config))["tensors"]
    assert row["coding"] == "jpeg" and row["quality"] < 98
    top = encode(state, replace(CONFIG, quality=98))
    assert found.nbytes < len(top) and summarize(top)["tensors"][0]["coding"] == "int8"


def test_qualities_with_the_same_flat_steps_are_measured_once(state):
    found = allocate(state, CONFIG, make_distortion(state), limit=1.0, qualities=[92, 90])  # both step 3
    assert [q for q, _, _ in found.curves["numb"]] == [92]


def test_tensors_encode_would_refuse_are_refused_first(state):
    with pytest.raises(InvalidTensorError, match="'bad'.*NaN"):
        allocate({**state, "bad": torch.full((64, 64), float("nan"))}, CONFIG, make_distortion(state), limit=0.1)


@pytest.mark.parametrize("kwargs, message", [
    ({"limit": 0.0}, "limit must be positive"),
    ({"limit": float("nan")}, "limit must be positive"),
    ({"limit": 0.1, "qualities": []}, "qualities must be"),
    ({"limit": 0.1, "qualities": [0, 50]}, "qualities must be"),
])  # fmt: skip
def test_bad_settings_are_config_errors(state, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        allocate(state, CONFIG, make_distortion(state), **kwargs)


def test_a_cache_of_curve_points_is_filled_saved_and_reused(state):
    calls, saved = [], []

    def distortion(replaced):
        calls.append(1)
        return make_distortion(state)(replaced)

    cache: dict = {}
    first = allocate(state, CONFIG, distortion, limit=0.05, cache=cache, save=lambda c: saved.append(len(c)))
    measured = len(calls)
    assert saved and saved[-1] == len(cache) > 0 and all(len(v) == 3 for v in cache.values())
    probes = [k for k in cache if k.endswith("\tprobe")]
    assert sorted(probes) == ["numb\tprobe", "sensitive\tprobe"]
    calls.clear()
    again = allocate(state, CONFIG, distortion, limit=0.05, cache=cache)
    assert again.config == first.config and len(calls) == measured - len(probes)  # only whole-model measurements


def coded_at(state, q, hessians=None):
    return decode(encode(state, replace(CONFIG, quality=q), hessians=hessians))


def test_each_tensor_is_measured_once_and_its_curve_scaled_by_its_error(state):
    # The stand-in distortion is a weighted squared error, so scaling one measurement by each
    # quality's squared error gives every point of the curve exactly.
    calls = []

    def distortion(replaced):
        calls.append(sorted(replaced))
        return make_distortion(state)(replaced)

    found = allocate(state, CONFIG, distortion, limit=0.05)
    singles = [c for c in calls if len(c) == 1]
    assert sorted(singles) == [["numb"], ["sensitive"]] and found.evaluations == len(calls)
    for name, curve in found.curves.items():
        assert len(curve) >= 3
        for q, _, d in curve:
            assert d == pytest.approx(make_distortion(state)({name: coded_at({name: state[name]}, q)[name]}), rel=1e-6)


def test_with_second_moments_the_curve_follows_the_output_error():
    g = torch.Generator().manual_seed(1)
    w, a = torch.randn(128, 256, generator=g), torch.randn(256, 256, generator=g)
    h = a @ a.T + torch.diag(torch.linspace(0.1, 50, 256))  # inputs whose directions matter unequally
    state, hessians = {"w": w}, {"w": h}

    def distortion(replaced):
        e = (replaced["w"] - w).double() if replaced else torch.zeros_like(w, dtype=torch.float64)
        return 1e-4 * float(((e @ h.double()) * e).sum())

    found = allocate(state, CONFIG, distortion, limit=0.5, hessians=hessians)
    assert found.evaluations == 1 + 1 + len(found.trials) - 1  # the top, one probe, then whole models
    assert len(found.curves["w"]) >= 3
    for q, _, d in found.curves["w"]:
        assert d == pytest.approx(distortion(coded_at(state, q, hessians)), rel=1e-4)
