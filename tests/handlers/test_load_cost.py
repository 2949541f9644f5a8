"""A few bytes of manifest may not cost minutes or gigabytes at load: layer counts and sample
sizes are checked before anything is built or allocated."""

from __future__ import annotations

import pytest
import torch

from jpegweights import handlers
from jpegweights.handlers import ArchitectureError, HandlerConfigError
from jpegweights.handlers.base import MAX_SAMPLE_VALUES
from jpegweights.handlers.sequential import MAX_ACTIVATION_VALUES, MAX_LAYERS
from tests.handlers.tiny_text import tiny_text

RAW = {"name": "raw"}


def test_a_chain_of_more_layers_than_the_limit_is_refused():
    layers = [{"type": "Flatten"}] + [{"type": "ReLU"}] * MAX_LAYERS
    with pytest.raises(ArchitectureError, match=f"has {MAX_LAYERS + 1} layers; the limit is {MAX_LAYERS}"):
        handlers.load({"architecture": {"input_shape": [4], "layers": layers}, "handler": RAW}, {})
    handlers.load({"architecture": {"input_shape": [4], "layers": layers[:-1]}, "handler": RAW}, {})  # at the limit


@pytest.mark.parametrize("key", ["num_hidden_layers", "n_layer", "encoder_layers"])
def test_a_transformers_config_of_too_many_layers_is_refused_before_it_is_built(key):
    manifest, state = tiny_text()
    manifest["architecture"]["config"][key] = 1 << 31
    with pytest.raises(ArchitectureError, match=f"config '{key}' is {1 << 31}; the limit is {MAX_LAYERS} layers"):
        handlers.load(manifest, state)


@pytest.mark.parametrize(
    "handler",
    [
        {"name": "raw", "config": {"input_shape": [4096, 4096]}},
        {"name": "image-classification", "config": {"input_shape": [3, 4096, 4096]}},
    ],
)
def test_an_input_shape_of_too_many_values_per_sample_is_refused(handler):
    architecture = {"input_shape": [4], "layers": [{"type": "Flatten"}]}
    with pytest.raises(HandlerConfigError, match=f"values per sample; the limit is {MAX_SAMPLE_VALUES}"):
        handlers.load({"architecture": architecture, "handler": handler}, {})


def test_a_layer_whose_output_per_sample_is_over_the_limit_is_refused_before_anything_runs():
    """A padding of 930 makes a 28x28 input 21 M values (seconds and 400 MB in the example's
    forward pass); found from shapes on the meta device. At the limit, it loads."""
    side = 1024  # 1 x 1024 x 1024 is 1,048,576 values: the limit
    conv = {"type": "Conv2d", "in_channels": 1, "out_channels": 1, "kernel_size": 1, "bias": False}
    layers = [{**conv, "padding": 498}, {"type": "Flatten"}]
    architecture = {"input_shape": [1, 28, 28], "layers": layers}
    state = {"0.weight": torch.ones(1, 1, 1, 1)}
    handlers.load({"architecture": architecture, "handler": RAW}, state)  # 28 + 2 * 498 = 1024: at the limit
    layers[0]["padding"] = 499
    with pytest.raises(
        ArchitectureError,
        match=f"layer 0 .Conv2d. outputs 1,052,676 values per sample; the limit is {MAX_ACTIVATION_VALUES:,}",
    ):
        handlers.load({"architecture": architecture, "handler": RAW}, state)
    assert side * side == MAX_ACTIVATION_VALUES
