"""Compressed-domain inference: a built model's Linear and 1x1 Conv2d layers swapped for ones
that compute from their weights' JPEG coefficients (``codec.coefficients``), in place.

>>> handler = load(manifest, state)                           # the dense model, as usual
>>> report = compress(handler, package_bytes, state)           # swaps layers in place
>>> report["resident_bytes"], report["float32_bytes"]

A layer is swapped only where it pays: under ``policy="auto"``, when at most ``MAX_DENSITY``
coefficients per weight are kept. At 4 bytes per kept coefficient that is at most 1/8 of the
float32 weight, and the sparse product then beats the dense one at batch 1 on this machine's
measurements (docs/compressed-domain.md). ``policy="all"`` swaps every layer it can.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from jpegweights.codec.coefficients import CoefficientMatrix, load_matrices

from .base import Handler
from .errors import ArchitectureError

log = logging.getLogger("jpegweights.handlers")
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
        return f"{self.matrix.name}: {self.matrix.cols}->{self.matrix.rows}, {self.matrix.density:.1%} of coefficients kept, {self.matrix.nbytes:,} bytes"


class CompressedConv1x1(CompressedLinear):
    """A 1x1 ``nn.Conv2d`` (stride 1, no padding, one group): a Linear over the channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W)
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def _swappable(m: nn.Module) -> type[CompressedLinear] | None:
    if type(m) is nn.Linear:
        return CompressedLinear
    if type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.stride == (1, 1) and m.padding in ((0, 0), "valid") and m.dilation == (1, 1) and m.groups == 1:
        return CompressedConv1x1
    return None


def _row_scale(weight: torch.Tensor, decoded: torch.Tensor) -> tuple[bool, torch.Tensor | None]:
    """Whether the module's weight is the decoded tensor with each row multiplied by a factor
    (a folded BatchNorm), and the factors (None where they are all 1)."""
    w, d = weight.detach().reshape(len(weight), -1).float(), decoded.reshape(len(decoded), -1).float().to(weight.device)
    if torch.equal(w, d):
        return True, None
    norm = (d * d).sum(dim=1)
    g = torch.where(norm > 0, (w * d).sum(dim=1) / norm.clamp_min(1e-30), torch.ones_like(norm))
    return bool(torch.allclose(w, g[:, None] * d, rtol=1e-4, atol=1e-6 * float(w.abs().max()))), g


def compress(handler: Handler, package: bytes | bytearray | memoryview, state: Mapping[str, torch.Tensor], policy: str = "auto") -> dict[str, Any]:
    """Swap the layers of the handler's module whose weights ``package`` codes as JPEG (``state``
    is its decoded state_dict), run the handler's example again, and report: ``layers``
    swapped, ``dense`` (each other Linear or 1x1 conv and why), ``resident_bytes`` and
    ``float32_bytes`` of the weights; for the swapped layers, their ``pixels`` (weights), how
    many of those libjpeg clamps (``clipped_pixels``), and the ``max_pixel_difference`` to
    libjpeg's decode. Raises the codec's ``JpegDecodeError`` for a corrupt stream; a stream
    that is not baseline leaves its layer dense, with a log line."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    module = handler.module
    layers = {f"{name}.weight": (name, m) for name, m in module.named_modules() if name and _swappable(m)}
    matrices, dense = load_matrices(package, names={key for key in layers if key in state})
    for key, why in dense.items():
        log.warning("compressed domain: %s stays dense: %s", key, why)
    swapped: list[CoefficientMatrix] = []
    for key, (name, m) in layers.items():
        if key not in state or key in dense:
            continue
        matrix = matrices.get(key)
        if matrix is None:
            dense[key] = "not JPEG-coded"
            continue
        same, row_scale = _row_scale(m.weight, state[key])
        if not same:
            dense[key] = "the module's weight is not the decoded tensor"
        elif policy == "auto" and matrix.density > MAX_DENSITY:
            dense[key] = f"{matrix.density:.0%} of coefficients kept: dense is smaller and faster"
        else:
            parent, _, child = name.rpartition(".")
            matrix = matrix.to(m.weight.device) if row_scale is None else matrix.to(m.weight.device).scaled(row_scale)
            setattr(module.get_submodule(parent) if parent else module, child, _swappable(m)(matrix, m.bias))
            swapped.append(matrix)
    if swapped:  # the model must still take its own example
        try:
            handler.signature = handler.measure(handler.run(handler.decode_request(handler.example())))
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise ArchitectureError(f"the model does not run in the compressed domain: {type(exc).__name__}: {str(exc)[:200]}") from None
    report = {
        "policy": policy,
        "layers": len(swapped),
        "dense": dict(sorted(dense.items())),
        "resident_bytes": resident_bytes(module),
        "float32_bytes": sum(t.numel() * 4 for t in state.values()),
        "pixels": sum(m.rows * m.cols for m in swapped),
        "clipped_pixels": sum(m.clipped for m in swapped),
        "max_pixel_difference": round(max((m.max_pixel_difference for m in swapped), default=0.0), 3),
    }
    log.info("compressed domain: %d layers swapped, %d dense, %s resident weight bytes", report["layers"], len(dense), f"{report['resident_bytes']:,}")
    _release_freed_memory()
    return report


def _release_freed_memory() -> None:
    """Hand the pages freed by the dense weights and the decode's buffers back to the system
    (glibc keeps them otherwise: MiniLM's process held 1,016 MiB instead of 888)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


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
