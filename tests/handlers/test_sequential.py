from __future__ import annotations

import pytest
import torch

from jpegweights.codec import EncodeConfig, decode, encode, load_manifest
from jpegweights.handlers import ArchitectureError, build, preprocess
from jpegweights.training.train import ARCHITECTURES


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_spec_builds_a_module_whose_state_dict_round_trips(arch):
    spec = ARCHITECTURES[arch]
    torch.manual_seed(0)
    model = build(spec).eval()
    x = preprocess(spec, torch.randint(0, 256, (8, *spec["input_shape"]), generator=torch.Generator().manual_seed(1)))
    # lossless: the rebuilt module computes exactly what the original does
    data = encode(model.state_dict(), EncodeConfig(coding="raw", raw_dtype="same"), architecture=spec)
    assert load_manifest(data)["architecture"] == spec
    rebuilt = build(load_manifest(data)["architecture"], decode(data)).eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
        # coded at quality 90: same answers, close logits
        coded = build(spec, decode(encode(model.state_dict(), EncodeConfig(quality=90), architecture=spec))).eval()
        assert torch.equal(coded(x).argmax(1), model(x).argmax(1))
        assert float((coded(x) - model(x)).abs().max()) < 0.05 * float(model(x).abs().max())


def test_state_is_checked_against_the_architecture():
    spec = ARCHITECTURES["mlp"]
    state = build(spec).state_dict()
    state["1.weight"] = state["1.weight"][:, :100]
    with pytest.raises(ArchitectureError, match="wrong shape \\['1.weight'\\]"):
        build(spec, state)
    with pytest.raises(ArchitectureError, match="missing \\['3.bias'\\]"):
        build(spec, {k: v for k, v in build(spec).state_dict().items() if k != "3.bias"})


@pytest.mark.parametrize(
    "spec, message",
    [
        ([], "must be a JSON object"),
        ({"input_shape": [0], "layers": [{"type": "ReLU"}]}, "input_shape must be a list of positive ints"),
        ({"input_shape": [4], "layers": []}, "layers must be a non-empty list"),
        (
            {"input_shape": [4], "layers": [{"type": "Linear", "in_features": 4, "out_features": 2, "evil": 1}]},
            "unknown arguments \\['evil'\\]",
        ),
        (
            {"input_shape": [4], "layers": [{"type": "Linear", "in_features": "x", "out_features": 2}]},
            "layer 0 \\(Linear\\)",
        ),
        ({"input_shape": [4], "layers": [{"type": "ReLU"}], "preprocess": {"exec": "x"}}, "preprocess takes only"),
        (
            {"input_shape": [4], "layers": [{"type": "ReLU"}], "preprocess": {"scale": "x"}},
            "scale must be a finite number",
        ),
        ({"input_shape": [4], "layers": [{"type": "ReLU"}], "preprocess": {"std": [0]}}, "std must be"),
        ({"input_shape": [4], "layers": [{"type": ["Linear"]}]}, "unknown type \\['Linear'\\]"),
        (
            {"input_shape": [4], "layers": [{"type": "Linear", "in_features": -1, "out_features": 2}]},
            "negative dimension",
        ),
        (
            {"input_shape": [4], "layers": [{"type": "Linear", "in_features": 2**20, "out_features": 2**20}]},
            "over the limit",
        ),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(ArchitectureError, match=message):
        build(spec)


@pytest.mark.parametrize(
    "layer, shape",
    [
        (torch.nn.Conv2d(3, 8, 3), (2, 3, 17, 16)),
        (torch.nn.Conv2d(3, 4, (5, 3), stride=(2, 3), padding=(2, 1), dilation=(1, 2)), (1, 3, 31, 29)),
        (torch.nn.Conv2d(4, 4, 3, groups=2, padding=1), (1, 4, 8, 8)),
        (torch.nn.MaxPool2d(3, stride=2, padding=1), (1, 2, 15, 14)),
        (torch.nn.AvgPool2d(2), (1, 2, 9, 9)),
        (torch.nn.AdaptiveAvgPool2d((3, None)), (1, 2, 9, 7)),
        (torch.nn.Linear(6, 5), (2, 3, 6)),
        (torch.nn.Flatten(), (2, 3, 4, 5)),
        (torch.nn.LayerNorm(5), (2, 5)),
        (torch.nn.BatchNorm2d(2), (1, 2, 3, 3)),
    ],
)
def test_the_activation_check_computes_each_layers_output_shape(layer, shape):
    """The check computes shapes rather than run the layers on the meta device (whose kernels
    import torch._dynamo and sympy): the same shapes as the layer's real output."""
    from jpegweights.handlers.sequential import shaped

    expected = layer.eval()(torch.zeros(shape)).shape
    assert shaped(layer, torch.empty(shape, device="meta")).shape == expected
