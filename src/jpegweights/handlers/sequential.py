"""The ``sequential`` architecture: a JSON-able ``nn.Sequential`` of standard layers.

A package's manifest may carry one so that it can be rebuilt without user code:

>>> spec = {"input_shape": [1, 28, 28], "layers": [
...     {"type": "Flatten"}, {"type": "Linear", "in_features": 784, "out_features": 10}]}
>>> make(validate_spec(spec))
Sequential(...)

State-dict keys are those of ``torch.nn.Sequential``: ``"1.weight"`` for layer 1.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .errors import ArchitectureError, show

MAX_LAYERS = 1_000  # layers (transformer blocks, for transformers configs): checked before any is built
# Values one layer may output per sample, found on the meta device before anything runs: 4 MiB
# of float32 (a 64 x 128 x 128 convolution), 64 MiB in a pass padded to the server's 16 rows; a
# padding of 930 made a 28x28 input 21 M.
MAX_ACTIVATION_VALUES = 1 << 20
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
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, frozenset({"output_size"})),
}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_spec(spec: Any) -> dict[str, Any]:
    """Check an architecture spec's shape; raise ``ArchitectureError`` naming the problem."""
    if not isinstance(spec, dict):
        raise ArchitectureError("architecture must be a JSON object")
    if set(spec) - {"kind", "input_shape", "layers", "preprocess"}:
        raise ArchitectureError(
            "a sequential architecture has no field(s) "
            f"{show(sorted(set(spec) - {'kind', 'input_shape', 'layers', 'preprocess'}), 200)}"
        )
    shape = spec.get("input_shape")
    if not (
        isinstance(shape, list)
        and 0 < len(shape) <= 8
        and all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 1 << 20 for d in shape)
    ):
        raise ArchitectureError(f"architecture.input_shape must be a list of positive ints, got {show(shape)}")
    layers = spec.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ArchitectureError("architecture.layers must be a non-empty list")
    if len(layers) > MAX_LAYERS:
        raise ArchitectureError(f"architecture.layers has {len(layers)} layers; the limit is {MAX_LAYERS}")
    for i, layer in enumerate(layers):
        kind = layer.get("type") if isinstance(layer, dict) else None
        if not isinstance(kind, str) or kind not in LAYERS:
            raise ArchitectureError(f"layer {i}: unknown type {show(kind if isinstance(layer, dict) else layer)}")
        extra = set(layer) - {"type"} - LAYERS[kind][1]
        if extra:
            raise ArchitectureError(f"layer {i} ({kind}): unknown arguments {show(sorted(extra), 200)}")
    pre = spec.get("preprocess", {})
    if not isinstance(pre, dict) or set(pre) - {"scale", "mean", "std"}:
        raise ArchitectureError("architecture.preprocess takes only scale, mean and std")
    if "scale" in pre and not _number(pre["scale"]):
        raise ArchitectureError("architecture.preprocess.scale must be a finite number")
    for key in ("mean", "std"):
        values = pre.get(key, [1.0])
        if not (isinstance(values, list) and values and all(_number(v) for v in values)) or (
            key == "std" and 0 in values
        ):
            raise ArchitectureError(
                f"architecture.preprocess.{key} must be a non-empty list "
                f"of finite numbers{' (no zero)' if key == 'std' else ''}"
            )
    return spec


def _modules(spec: dict[str, Any]) -> list[nn.Module]:
    modules = []
    for i, layer in enumerate(spec["layers"]):
        cls, _ = LAYERS[layer["type"]]
        kwargs = {k: v for k, v in layer.items() if k != "type"}
        try:
            modules.append(cls(**kwargs))
        except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
            raise ArchitectureError(f"layer {i} ({layer['type']}): {str(exc)[:200]}") from exc
    return modules


def make(spec: dict[str, Any]) -> nn.Sequential:
    """The untrained ``nn.Sequential`` a (checked) spec describes, on the current default device."""
    return nn.Sequential(*_modules(spec))


def check_activations(spec: dict[str, Any], meta: nn.Sequential) -> None:
    """Raise ``ArchitectureError`` if a layer of ``meta`` (``make(spec)`` on the meta device)
    outputs more than ``MAX_ACTIVATION_VALUES`` per sample. Shapes that do not chain are left to
    the real forward pass, which names them."""
    sizes: list[int] = []
    x = torch.empty(1, *spec["input_shape"], device="meta")
    try:
        for m in meta:
            x = shaped(m, x)
            sizes.append(x.numel())
    except Exception:
        pass
    for i, n in enumerate(sizes):
        if n > MAX_ACTIVATION_VALUES:
            raise ArchitectureError(
                f"layer {i} ({spec['layers'][i]['type']}) outputs {n:,} values per sample; "
                f"the limit is {MAX_ACTIVATION_VALUES:,}"
            )


# Layers whose output has their input's shape. Run on the meta device, these (and Linear's
# addmm, and the convolutions' and pools' shape checks) go through decompositions and symbolic
# shapes whose first use imports torch._dynamo and sympy: a second of a cold client's start, for
# a check that needs only shapes. So shapes are computed here.
SAME_SHAPE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.Dropout, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)
WINDOWED = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def shaped(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``m(x)``'s shape, as an empty meta tensor; ``ValueError`` where ``x`` does not fit ``m``
    (the real forward pass then says how)."""
    if isinstance(m, SAME_SHAPE):
        return x
    if isinstance(m, nn.Linear):
        if x.dim() < 1 or x.shape[-1] != m.in_features:
            raise ValueError("input width")
        return x.new_empty(*x.shape[:-1], m.out_features)
    if isinstance(m, WINDOWED):
        if x.dim() != 4 or (isinstance(m, nn.Conv2d) and x.shape[1] != m.in_channels):
            raise ValueError("input channels")
        pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
        k, stride, pad = pair(m.kernel_size), pair(m.stride or m.kernel_size), pair(m.padding)
        dilation = pair(getattr(m, "dilation", 1))
        h, w = (
            (n + 2 * p - d * (kk - 1) - 1) // s + 1 for n, p, d, kk, s in zip(x.shape[2:], pad, dilation, k, stride)
        )
        if h < 1 or w < 1:
            raise ValueError("empty output")
        return x.new_empty(x.shape[0], m.out_channels if isinstance(m, nn.Conv2d) else x.shape[1], h, w)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        h, w = (v if v is not None else n for v, n in zip(nn.modules.utils._pair(m.output_size), x.shape[-2:]))
        return x.new_empty(*x.shape[:-2], h, w)
    return m(x)  # Flatten: a view


def preprocess(spec: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
    """Raw inputs (e.g. pixels 0..255) of shape (n, *input_shape) -> the model's input."""
    pre = spec.get("preprocess", {})
    x = x.to(torch.float32) * float(pre.get("scale", 1.0))
    if "mean" in pre:
        shape = (1, -1) + (1,) * (x.dim() - 2)  # broadcast per channel
        x = x - torch.tensor(pre["mean"], dtype=x.dtype, device=x.device).view(shape)
        x = x / torch.tensor(pre.get("std", [1.0]), dtype=x.dtype, device=x.device).view(shape)
    return x
