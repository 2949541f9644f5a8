"""Compressed-domain layers: a module's Linear and 1x1 Conv2d layers swapped, in place, for ones
that compute from their weights' JPEG coefficients (``compressed.weights``).

>>> report = swap_layers(model, package_bytes, state)      # state: the package's decoded state_dict
>>> report["layers"], resident_bytes(model)

A layer is swapped only where it pays: under ``policy="auto"``, when at most ``MAX_DENSITY``
coefficients per weight are kept. At 4 bytes per kept coefficient that is at most 1/8 of the
float32 weight, and the sparse product then beats the dense one at batch 1 on this machine's
measurements (docs/compressed-domain.md). ``policy="all"`` swaps every layer it can.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .weights import CoefficientMatrix, load_matrices

log = logging.getLogger("jpegweights.compressed")
MAX_DENSITY = 0.125
POLICIES = ("auto", "all")


class CompressedLinear(nn.Module):
    """``nn.Linear`` whose weight stays as JPEG coefficients: ``y = x W^T + b`` with ``W``
    never built."""

    def __init__(self, matrix: CoefficientMatrix, bias: torch.Tensor | None):
        super().__init__()
        self.matrix = matrix
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.matrix.matmul(x)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        m = self.matrix
        return f"{m.name}: {m.cols}->{m.rows}, {m.density:.1%} of coefficients kept, {m.nbytes:,} bytes"


class CompressedConv1x1(CompressedLinear):
    """A 1x1 ``nn.Conv2d`` (stride 1, no padding, one group): a Linear over the channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W)
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def swappable(m: nn.Module) -> type[CompressedLinear] | None:
    """The compressed class that can replace ``m``, or None."""
    if type(m) is nn.Linear:
        return CompressedLinear
    if type(m) is not nn.Conv2d or m.kernel_size != (1, 1) or m.stride != (1, 1):
        return None
    return CompressedConv1x1 if m.padding in ((0, 0), "valid") and m.dilation == (1, 1) and m.groups == 1 else None


def _row_scale(weight: torch.Tensor, decoded: torch.Tensor) -> tuple[bool, torch.Tensor | None]:
    """Whether the module's weight is the decoded tensor with each row multiplied by a factor
    (a folded BatchNorm), and the factors (None where they are all 1)."""
    w, d = weight.detach().reshape(len(weight), -1).float(), decoded.reshape(len(decoded), -1).float().to(weight.device)
    if torch.equal(w, d):
        return True, None
    norm = (d * d).sum(dim=1)
    g = torch.where(norm > 0, (w * d).sum(dim=1) / norm.clamp_min(1e-30), torch.ones_like(norm))
    return bool(torch.allclose(w, g[:, None] * d, rtol=1e-4, atol=1e-6 * float(w.abs().max()))), g


def swap_layers(
    module: nn.Module, package: bytes | bytearray | memoryview, state: Mapping[str, torch.Tensor], policy: str = "auto"
) -> dict[str, Any]:
    """Swap the layers of ``module`` whose weights ``package`` codes as JPEG (``state`` is its
    decoded state_dict) and report: ``layers`` swapped, ``dense`` (each other Linear or 1x1 conv
    and why), ``resident_bytes`` and ``float32_bytes`` of the weights; for the swapped layers,
    their ``pixels`` (weights), how many of those libjpeg clamps (``clipped_pixels``), and the
    ``max_pixel_difference`` to libjpeg's decode. ``ValueError`` for an unknown policy; the
    codec's ``JpegDecodeError`` for a corrupt stream; a stream that is not baseline leaves its
    layer dense, with a log line."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    layers = {f"{name}.weight": (name, m) for name, m in module.named_modules() if name and swappable(m)}
    matrices, dense = load_matrices(package, names={key for key in layers if key in state})
    for key, why in dense.items():
        log.warning("compressed domain: %s stays dense: %s", key, why)
    swapped: list[CoefficientMatrix] = []
    for key, (name, m) in layers.items():
        if key in state and key not in dense:
            why = _swap(module, name, m, matrices.get(key), state[key], policy)
            if isinstance(why, str):
                dense[key] = why
            else:
                swapped.append(why)
    return {
        "policy": policy,
        "layers": len(swapped),
        "dense": dict(sorted(dense.items())),
        "resident_bytes": resident_bytes(module),
        "float32_bytes": sum(t.numel() * 4 for t in state.values()),
        "pixels": sum(m.rows * m.cols for m in swapped),
        "clipped_pixels": sum(m.clipped for m in swapped),
        "max_pixel_difference": round(max((m.max_pixel_difference for m in swapped), default=0.0), 3),
    }


def _swap(
    module: nn.Module, name: str, m: nn.Module, matrix: CoefficientMatrix | None, decoded: torch.Tensor, policy: str
) -> CoefficientMatrix | str:
    """Replace the layer ``name`` (``m``) by its compressed form: the matrix it uses, or why not."""
    if matrix is None:
        return "not JPEG-coded"
    same, row_scale = _row_scale(m.weight, decoded)
    if not same:
        return "the module's weight is not the decoded tensor"
    if policy == "auto" and matrix.density > MAX_DENSITY:
        return f"{matrix.density:.0%} of coefficients kept: dense is smaller and faster"
    matrix = matrix.to(m.weight.device) if row_scale is None else matrix.to(m.weight.device).scaled(row_scale)
    parent, _, child = name.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, child, swappable(m)(matrix, m.bias))
    return matrix


def resident_bytes(module: nn.Module) -> int:
    """Bytes the module's weights hold in memory: its parameters and buffers (each storage
    once) and its compressed layers' coefficients."""
    seen, total = set(), 0
    for t in [*module.parameters(), *module.buffers()]:
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total + sum(m.matrix.nbytes for m in module.modules() if isinstance(m, CompressedLinear))


def decompress(module: nn.Module) -> nn.Module:
    """The module with each compressed layer back as a dense one, its weight rebuilt from the
    same coefficients by a float IDCT (``CoefficientMatrix.dense``): the reference a compressed
    model's outputs are compared with. In place; returns the module."""
    for name, m in list(module.named_modules()):
        if not isinstance(m, CompressedLinear):
            continue
        w = m.matrix.dense()
        dense = nn.Linear(m.matrix.cols, m.matrix.rows, bias=m.bias is not None)
        if isinstance(m, CompressedConv1x1):
            dense, w = nn.Conv2d(m.matrix.cols, m.matrix.rows, 1, bias=m.bias is not None), w[:, :, None, None]
        dense = dense.to(w.device)
        dense.weight.data = w
        if m.bias is not None:
            dense.bias.data = m.bias.data.clone()
        parent, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, child, dense)
    return module
