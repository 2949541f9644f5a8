from __future__ import annotations

import pytest
import torch

from codec import ArchitectureError, build_module, decode, encode, load_manifest, preprocess
from training.train import ARCHITECTURES


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_spec_builds_a_module_whose_state_dict_round_trips(arch):
    spec = ARCHITECTURES[arch]
    torch.manual_seed(0)
    model = build_module(spec).eval()
    data = encode(model.state_dict(), architecture=spec)
    assert load_manifest(data)["architecture"] == spec
    rebuilt = build_module(load_manifest(data)["architecture"]).eval()
    rebuilt.load_state_dict(decode(data))
    x = preprocess(spec, torch.randint(0, 256, (4, *spec["input_shape"])))
    assert rebuilt(x).shape == (4, 10)


@pytest.mark.parametrize(
    "spec, message",
    [
        ([], "must be a JSON object"),
        ({"input_shape": [0], "layers": [{"type": "ReLU"}]}, "input_shape must be a list of positive ints"),
        ({"input_shape": [4], "layers": []}, "layers must be a non-empty list"),
        ({"input_shape": [4], "layers": [{"type": "Linear", "in_features": 4, "out_features": 2, "evil": 1}]}, "unknown arguments \\['evil'\\]"),
        ({"input_shape": [4], "layers": [{"type": "Linear", "in_features": "x", "out_features": 2}]}, "layer 0 \\(Linear\\)"),
        ({"input_shape": [4], "layers": [{"type": "ReLU"}], "preprocess": {"exec": "x"}}, "preprocess takes only"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(ArchitectureError, match=message):
        build_module(spec)
