"""From a tensor to 8-bit tiles and back: 2-D views, per-row affine ranges, tile layouts.

Every coded tensor is first seen as a matrix ``(rows, cols)``: the first dimension is kept and
the rest flattened (Linear ``(out, in)``, Conv ``(out, in*kh*kw)``, Embedding ``(num, dim)``).
Each row gets its own affine map to 0..255: ``x ≈ offset[r] + scale[r] * q``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from .errors import ConfigError

RANGES = ("row", "tensor")
ROWS_RE = re.compile(r"^rows:(\d+)x(\d+)$")


def view2d(shape: tuple[int, ...] | torch.Size) -> tuple[int, int]:
    """The (rows, cols) matrix a tensor of ``shape`` is coded as."""
    rows = shape[0] if shape else 1
    cols = math.prod(shape[1:]) if len(shape) > 1 else 1
    return rows, cols


@dataclass(frozen=True)
class RowAffine:
    q: torch.Tensor  # (rows, cols) uint8
    scale: torch.Tensor  # (rows,) float16 or float32
    offset: torch.Tensor  # (rows,) same dtype as scale


def _fits_float16(values: torch.Tensor) -> bool:
    half = values.to(torch.float16).to(torch.float32)
    ok = torch.isfinite(half) & ((half - values).abs() <= 1e-3 * values.abs())
    return bool(ok.all())


# Under row weights a step is at most range / 15 and codes are centred (at most 120 steps below
# the row's minimum): |offset| + 255·step <= |lo| + 25·range <= 51·max|t|.
WEIGHTED_REACH = 51


def affine_representable(t: torch.Tensor, reach: float = 2) -> bool:
    """Whether any per-row affine code of ``t`` decodes within float32's and the dtype's range
    (|offset| + 255 * scale <= 2 * max|t|, or ``reach`` times: the bound the reader checks)."""
    m = reach * max(abs(float(v)) for v in torch.aminmax(t)) if t.numel() else 0.0
    return m <= min(torch.finfo(torch.float32).max, torch.finfo(t.dtype).max) / 1.01


KEEP_FULL = 0.03  # under row weights, the share of rows at their range's step (docs/codec.md)
MIN_LEVELS = 16  # under row weights, the fewest codes across a row's range (a row never looked up: finite steps)


def quantize_rows(
    x: torch.Tensor,
    clip_sigma: float | None = None,
    ranges: str = "row",
    scale_dtype: str = "auto",
    weights: torch.Tensor | None = None,
) -> RowAffine:
    """(rows, cols) float -> uint8 with one affine range per row (``ranges="row"``), or one
    range shared by the whole tensor (``ranges="tensor"``, still stored per row).

    ``weights`` (rows,), non-negative: how much each row's error counts (a lookup table's rows:
    how often each is looked up). Each row's step is then ``κ / √w``, no finer than its range's
    step and no coarser than ``MIN_LEVELS`` codes across its range, with ``κ`` set so that the
    ``KEEP_FULL`` share of rows that need it most keep their range's step; a row's codes are
    centred on 128. Minimising ``Σ w·step²`` at a given rate gives steps ∝ ``1/√w`` (reverse
    water-filling).

    ``clip_sigma`` clips each row to mean ± k·std before taking its range (outliers then
    saturate). Ranges are computed in float64 (``hi - lo`` overflows float32 for huge values).
    A constant row gets scale 0, so it decodes exactly whatever its codes become. Scale and
    offset are rounded to their stored dtype *before* quantizing, so the decoder's arithmetic
    is exactly the encoder's. ``scale_dtype="auto"`` stores float16 when it represents every
    scale and offset to 0.1%, else float32.
    """
    if ranges not in RANGES:
        raise ConfigError(f"ranges must be one of {RANGES}, got {ranges!r}")
    stats = x if ranges == "row" else x.reshape(1, -1)  # (rows, cols) or (1, rows*cols)
    lo, hi = (m.to(torch.float64).expand(len(x)) for m in torch.aminmax(stats, dim=1))
    if clip_sigma is not None:
        stats = stats.to(torch.float64)
        mean, std = stats.mean(dim=1), stats.std(dim=1, correction=0)
        lo = torch.maximum(lo, mean - clip_sigma * std)
        hi = torch.minimum(hi, mean + clip_sigma * std)
    scale = (hi - lo) / 255
    if weights is not None:
        root = weights.to(torch.float64).sqrt()
        need = scale * root
        kappa = need.kthvalue(max(1, math.ceil((1 - KEEP_FULL) * len(need)))).values
        wanted = torch.where(root > 0, kappa / root, math.inf)  # a row never looked up: the coarsest
        coarse = torch.minimum(torch.maximum(scale, wanted), (hi - lo) / (MIN_LEVELS - 1))
        lo = (
            lo - ((255 - (hi - lo) / torch.where(coarse > 0, coarse, 1)) / 2).floor() * coarse
        )  # centred, on a whole code
        scale = coarse
    scale = scale.to(torch.float32)
    lo = lo.to(torch.float32)
    if scale_dtype == "auto":
        scale_dtype = "float16" if _fits_float16(scale) and _fits_float16(lo) else "float32"
    dtype = getattr(torch, scale_dtype)
    scale, offset = scale.to(dtype), lo.to(dtype)
    step = scale.double()[:, None]
    safe = torch.where(step > 0, step, torch.ones_like(step))  # scale 0: every code decodes to offset
    q = torch.empty(x.shape, dtype=torch.uint8)
    for r in row_blocks(*x.shape):  # float64 a block at a time: a whole embedding's is 4x its float32
        q[r] = ((x[r].to(torch.float64) - offset.double()[r, None]) / safe[r]).round_().clamp_(0, 255)
    return RowAffine(q, scale, offset)


def row_blocks(rows: int, cols: int, values: int = 1 << 20) -> list[slice]:
    """Row slices of a ``(rows, cols)`` matrix of about ``values`` values each (at least one row)."""
    step = max(1, values // max(1, cols))
    return [slice(i, i + step) for i in range(0, rows, step)]


def check_layout(layout: str) -> tuple[int, int] | None:
    """Validate a layout setting's syntax; the tile size for ``rows:HxW``, else None."""
    if layout in ("auto", "matrix"):
        return None
    m = ROWS_RE.match(layout)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ConfigError(f"layout must be 'auto', 'matrix' or 'rows:HxW', got {layout!r}")
    return int(m.group(1)), int(m.group(2))


def parse_layout(layout: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, int] | None]:
    """Resolve a layout setting for ``shape``: ("rows", (h, w)) or ("matrix", None).

    ``auto`` picks the seed's layout (each row an ``s×s`` image) for 2-D tensors whose row
    length is a square ``s*s`` with ``s >= 8``, and the matrix layout otherwise.
    """
    tile = check_layout(layout)
    _, cols = view2d(shape)
    if layout == "matrix":
        return "matrix", None
    if layout == "auto":
        side = math.isqrt(cols)
        if len(shape) == 2 and side >= 8 and side * side == cols:
            return "rows", (side, side)
        return "matrix", None
    h, w = tile
    if h * w != cols:
        raise ConfigError(f"layout {layout} needs rows of {h * w} values, tensor rows have {cols}")
    return "rows", (h, w)


def ceil_to(n: int, k: int) -> int:
    return -(-n // k) * k
