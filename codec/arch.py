"""Declarative architectures: a JSON-able Sequential of standard layers.

The manifest may carry one so that a package can be rebuilt without user code:

>>> spec = {"input_shape": [1, 28, 28], "layers": [
...     {"type": "Flatten"}, {"type": "Linear", "in_features": 784, "out_features": 10}]}
>>> build_module(spec)
Sequential(...)

State-dict keys are those of ``torch.nn.Sequential``: ``"1.weight"`` for layer 1.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import ArchitectureError

# type -> (constructor, allowed keyword arguments)
LAYERS: dict[str, tuple[type[nn.Module], frozenset[str]]] = {
    "Linear": (nn.Linear, frozenset({"in_features", "out_features", "bias"})),
    "Conv2d": (
        nn.Conv2d,
        frozenset({"in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias"}),
    ),
    "ReLU": (nn.ReLU, frozenset()),
    "Tanh": (nn.Tanh, frozenset()),
    "Sigmoid": (nn.Sigmoid, frozenset()),
    "GELU": (nn.GELU, frozenset()),
    "MaxPool2d": (nn.MaxPool2d, frozenset({"kernel_size", "stride", "padding"})),
    "AvgPool2d": (nn.AvgPool2d, frozenset({"kernel_size", "stride", "padding"})),
    "Flatten": (nn.Flatten, frozenset({"start_dim", "end_dim"})),
    "Dropout": (nn.Dropout, frozenset({"p"})),
    "BatchNorm1d": (nn.BatchNorm1d, frozenset({"num_features", "eps", "momentum"})),
    "BatchNorm2d": (nn.BatchNorm2d, frozenset({"num_features", "eps", "momentum"})),
    "LayerNorm": (nn.LayerNorm, frozenset({"normalized_shape", "eps"})),
}


def validate_spec(spec: Any) -> dict[str, Any]:
    """Check an architecture spec's shape; raise ``ArchitectureError`` naming the problem."""
    if not isinstance(spec, dict):
        raise ArchitectureError("architecture must be a JSON object")
    shape = spec.get("input_shape")
    if not (isinstance(shape, list) and shape and all(isinstance(d, int) and d > 0 for d in shape)):
        raise ArchitectureError(f"architecture.input_shape must be a list of positive ints, got {shape!r}")
    layers = spec.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ArchitectureError("architecture.layers must be a non-empty list")
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict) or layer.get("type") not in LAYERS:
            raise ArchitectureError(f"layer {i}: unknown type {layer.get('type') if isinstance(layer, dict) else layer!r}")
        extra = set(layer) - {"type"} - LAYERS[layer["type"]][1]
        if extra:
            raise ArchitectureError(f"layer {i} ({layer['type']}): unknown arguments {sorted(extra)}")
    pre = spec.get("preprocess", {})
    if not isinstance(pre, dict) or set(pre) - {"scale", "mean", "std"}:
        raise ArchitectureError("architecture.preprocess takes only scale, mean and std")
    return spec


def build_module(spec: dict[str, Any]) -> nn.Sequential:
    """Build the (untrained) ``nn.Sequential`` that a spec describes."""
    validate_spec(spec)
    modules = []
    for i, layer in enumerate(spec["layers"]):
        cls, _ = LAYERS[layer["type"]]
        kwargs = {k: v for k, v in layer.items() if k != "type"}
        try:
            modules.append(cls(**kwargs))
        except (TypeError, ValueError) as exc:
            raise ArchitectureError(f"layer {i} ({layer['type']}): {exc}") from exc
    return nn.Sequential(*modules)


def preprocess(spec: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
    """Raw inputs (e.g. pixels 0..255) of shape (n, *input_shape) -> the model's input."""
    pre = spec.get("preprocess", {})
    x = x.to(torch.float32) * float(pre.get("scale", 1.0))
    if "mean" in pre:
        shape = (1, -1) + (1,) * (x.dim() - 2)  # broadcast per channel
        x = x - torch.tensor(pre["mean"], dtype=x.dtype, device=x.device).view(shape)
        x = x / torch.tensor(pre.get("std", [1.0]), dtype=x.dtype, device=x.device).view(shape)
    return x
