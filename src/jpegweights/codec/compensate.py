"""Error compensation: each column strip's coding error spread onto the columns not yet coded, so
that a matrix's *outputs* move less (GPTQ's and OBQ's update, with a JPEG strip as the quantizer).

>>> u = factor(x.T @ x)                       # x: (samples, cols), the inputs the matrix multiplies
>>> image = compensated(matrix, affine, u, table)   # the uint8 image to code, (rows, cols)

The codec knows no model: the caller gives, per matrix, the second moment ``H = Σ xᵀx`` of the
inputs it multiplies (``y = W x``, a Linear layer's or an unfolded convolution's). A lookup
table (an embedding, whose rows its one-hot inputs select) gets the diagonal of its inputs'
second moment instead, a ``(rows,)`` vector of how often each row is looked up
(``row_weights``): nothing to compensate across columns, but the rows used least get coarser
steps (``tiles.quantize_rows``). Coding then
minimises ``Σ_rows (w - ŵ) H (w - ŵ)ᵀ`` rather than ``|w - ŵ|²``. JPEG codes each 8×8 block
alone, so coding the matrix's columns 8 at a time, in strips the height of the matrix, gives
exactly the pixels the whole image decodes to. Each strip is coded, its error ``E`` measured, and
the columns to its right corrected by ``E U_BB⁻¹ U_BR``, where ``U`` is the upper Cholesky factor
of ``(H + λI)⁻¹``. Per-row affine ranges cancel out of that update, so it runs in pixel units.
The format does not change: a reader decodes an ordinary JPEG.
"""

from __future__ import annotations

import numpy as np
import torch

from . import jpeg
from .errors import InvalidTensorError
from .tiles import RowAffine

DAMP = 0.1  # λ as a fraction of H's mean diagonal: measured on MobileNetV2 and MiniLM (docs/codec.md)
STRIP = 8  # JPEG's block side
BATCH = 16 * STRIP  # columns whose corrections reach the later columns in one product
MAX_STRIP_ROWS = jpeg.MAX_SIDE - jpeg.MAX_SIDE % STRIP


def factor(hessian: torch.Tensor, cols: int, damp: float | None = None) -> torch.Tensor:
    """The upper Cholesky factor ``U`` of ``(H + λI)⁻¹``, float64, for a matrix of ``cols``
    columns; λ is ``damp`` (default ``DAMP``) times H's mean diagonal. Raises
    ``InvalidTensorError`` when ``H`` is not a finite, symmetric, positive semi-definite
    ``(cols, cols)`` matrix."""
    if not isinstance(hessian, torch.Tensor) or tuple(hessian.shape) != (cols, cols) or not hessian.is_floating_point():
        shape = tuple(hessian.shape) if isinstance(hessian, torch.Tensor) else type(hessian).__name__
        raise InvalidTensorError(f"the input second moment must be a float ({cols}, {cols}) tensor, got {shape}")
    h = hessian.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(h).all()) or not torch.allclose(h, h.T, rtol=1e-6, atol=1e-9 * float(h.abs().max())):
        raise InvalidTensorError("the input second moment must be finite and symmetric")
    if bool((torch.diagonal(h) < 0).any()):
        raise InvalidTensorError("the input second moment is not positive semi-definite (a negative diagonal)")
    mean = float(torch.diagonal(h).mean())
    if mean == 0:  # no input ever reached this matrix: nothing to compensate with
        return torch.eye(cols, dtype=torch.float64)
    h = h + (DAMP if damp is None else damp) * mean * torch.eye(cols, dtype=torch.float64)
    lower, info = torch.linalg.cholesky_ex(h)
    if int(info):
        raise InvalidTensorError("the input second moment is not positive semi-definite")
    return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)


def row_weights(hessian: torch.Tensor, rows: int) -> torch.Tensor:
    """A lookup table's "second moment", float64: a ``(rows,)`` vector of how often each row is
    looked up (the diagonal of its one-hot inputs' ``Σ xᵀx``), which ``tiles.quantize_rows``
    turns into each row's step. Raises ``InvalidTensorError`` unless it is finite, non-negative
    and not all zero."""
    if not isinstance(hessian, torch.Tensor) or tuple(hessian.shape) != (rows,) or not hessian.is_floating_point():
        shape = tuple(hessian.shape) if isinstance(hessian, torch.Tensor) else type(hessian).__name__
        raise InvalidTensorError(f"row weights must be a float ({rows},) tensor, got {shape}")
    w = hessian.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or not bool((w > 0).any()):
        raise InvalidTensorError("row weights must be finite and non-negative, and not all zero")
    return w


def round_trip(strip: np.ndarray, table: list[int]) -> np.ndarray:
    """The pixels ``strip`` decodes to once coded with ``table`` (Huffman tables change no
    pixel, so they are not optimised here)."""
    out = np.empty(strip.shape, dtype=np.float64)
    for r in range(0, len(strip), MAX_STRIP_ROWS):
        piece = np.ascontiguousarray(strip[r : r + MAX_STRIP_ROWS])
        data = jpeg.encode(piece, table, optimize=False)
        out[r : r + len(piece)] = jpeg.decode(torch.frombuffer(bytearray(data), dtype=torch.uint8)).numpy()
    return out


def compensated(matrix: torch.Tensor, affine: RowAffine, u: torch.Tensor, table: list[int]) -> np.ndarray:
    """The ``(rows, cols)`` uint8 image whose JPEG (with ``table``) decodes, through
    ``affine``'s ranges, to the matrix with the least output error found, strip by strip."""
    scale, offset = affine.scale.double(), affine.offset.double()
    step = torch.where(scale > 0, scale, torch.ones_like(scale))[:, None]
    pixels = ((matrix.double() - offset[:, None]) / step).numpy()
    u = u.numpy()
    rows, cols = pixels.shape
    image = np.empty((rows, cols), dtype=np.uint8)
    # GPTQ's lazy batches: a strip's correction reaches the columns of its own batch at once,
    # and those after the batch in one product per batch, which is the same sum.
    for i1 in range(0, cols, BATCH):
        i2 = min(i1 + BATCH, cols)
        scaled = np.zeros((rows, i2 - i1))  # each strip's error times U_BB⁻¹
        for b in range(i1, i2, STRIP):
            e = min(b + STRIP, i2)
            image[:, b:e] = np.clip(np.rint(pixels[:, b:e]), 0, 255)
            if e == cols:
                break
            error = pixels[:, b:e] - round_trip(image[:, b:e], table)
            scaled[:, b - i1 : e - i1] = np.linalg.solve(u[b:e, b:e].T, error.T).T
            pixels[:, e:i2] -= scaled[:, b - i1 : e - i1] @ u[b:e, e:i2]
        if i2 < cols:
            pixels[:, i2:] -= scaled @ u[i1:i2, i2:]
    return image
