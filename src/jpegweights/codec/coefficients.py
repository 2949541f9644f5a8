"""A JPEG stream's quantized DCT coefficients, read without libjpeg's IDCT (``jpeglib``), and
the pixels they code exactly: what ``clamp_free`` encoding checks and what
``jpegweights.compressed`` computes with.

Each 8x8 JPEG block is ``D^T K D`` (+128), with ``D`` the orthonormal 8-point DCT and ``K`` the
dequantized coefficients. ``read_coefficients`` reads them after libjpeg-turbo has decoded the
same stream strictly, so a corrupt stream raises ``JpegDecodeError`` before any coefficient is read.

>>> q, table, pixels = read_coefficients(stream, height, width)
>>> exact = exact_pixels(q.astype(np.int32) * table.astype(np.int32), height, width)
"""

from __future__ import annotations

import math
import os
import tempfile

import numpy as np
import torch

from . import jpeg
from .errors import DenseOnlyError, JpegDecodeError

BLOCK = 8


def dct_matrix(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The orthonormal 8-point DCT-II ``D[u, x]``: a JPEG block is ``D.T @ K @ D`` (+128)."""
    k = torch.arange(BLOCK, dtype=torch.float64)
    d = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * 0.5
    d[0] = math.sqrt(1 / 8)
    return d.to(dtype)


DCT32 = dct_matrix(torch.float32)


def read_coefficients(stream: torch.Tensor, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One grayscale JPEG -> ``(coefficients, table, pixels)``: quantized coefficients
    ``(height/8, width/8, 8, 8)`` int16 (rounded up to whole blocks, ``[by, bx, v, u]``), the
    ``(8, 8)`` quantization table, and libjpeg-turbo's own decoded ``(height, width)`` pixels.

    Raises ``JpegDecodeError`` for a stream libjpeg-turbo refuses (corrupt entropy-coded data
    included: it decodes strictly), and ``DenseOnlyError`` for one that is not baseline or that
    jpeglib reads otherwise than expected (several tables, other block counts): libjpeg-turbo
    decodes it, so the tensor can still serve dense."""
    data = stream.numpy().tobytes()
    marker, precision, h, w, components = jpeg.frame(data)
    if marker not in (0xC0, 0xC1) or precision != 8 or components != 1:
        raise DenseOnlyError(
            f"not baseline 8-bit grayscale (SOF marker 0x{marker:02X}, precision {precision}, {components} components)"
        )
    if (h, w) != (height, width):
        raise JpegDecodeError(f"JPEG header claims {h}x{w} pixels, expected {height}x{width}")
    pixels = jpeg.decode(stream)  # strict: raises JpegDecodeError on any corrupt data
    try:
        coefficients, table = read_dct(data)
    except JpegDecodeError as exc:
        raise DenseOnlyError(str(exc)) from exc
    blocks = (-(-height // BLOCK), -(-width // BLOCK))
    if coefficients is None or coefficients.shape != (*blocks, BLOCK, BLOCK) or table is None or len(table) != 1:
        raise DenseOnlyError(
            f"jpeglib read coefficients of shape {getattr(coefficients, 'shape', None)} and "
            f"{len(table) if table is not None else 'no'} tables, expected {(*blocks, 8, 8)} and 1"
        )
    return coefficients, np.asarray(table[0]), pixels.numpy()


def read_dct(data: bytes) -> tuple[np.ndarray | None, np.ndarray | None]:
    """jpeglib's (quantized coefficients, tables) of a stream, unchecked."""
    import jpeglib

    with stream_path(data) as path:
        try:
            dct = jpeglib.read_dct(path)
            return dct.Y, dct.qt
        except (OSError, ValueError, RuntimeError) as exc:
            raise JpegDecodeError(f"JPEG coefficients unreadable: {exc}") from exc


def exact_pixels(k: np.ndarray, height: int, width: int) -> torch.Tensor:
    """Dequantized coefficients ``(nby, nbx, 8, 8)`` -> the ``(height, width)`` float32 pixels
    they code, before libjpeg rounds them and clamps them to 0..255."""
    blocks = DCT32.T @ torch.from_numpy(k).float() @ DCT32  # (nby, nbx, 8, 8), pixels - 128
    return blocks.permute(0, 2, 1, 3).reshape(k.shape[0] * BLOCK, k.shape[1] * BLOCK)[:height, :width] + 128


def clamped(exact: torch.Tensor) -> torch.Tensor:
    """Where libjpeg clamps: exact pixel values that do not round into 0..255."""
    return (exact < -0.5) | (exact > 255.5)


def clipping_blocks(data: bytes, height: int, width: int) -> np.ndarray:
    """``(nby, nbx)`` bool: the blocks of one of our own streams (baseline grayscale) with a
    pixel that libjpeg clamps (its exact value outside -0.5..255.5)."""
    q, table = read_dct(data)
    exact = exact_pixels(q.astype(np.int32) * np.asarray(table[0], dtype=np.int32), height, width)
    outside = torch.nn.functional.pad(clamped(exact), (0, -width % BLOCK, 0, -height % BLOCK))
    return outside.view(q.shape[0], BLOCK, q.shape[1], BLOCK).any(dim=3).any(dim=1).numpy()


class stream_path:
    """A path that reads back ``data``: an anonymous memory file on Linux (nothing written to
    disk), else a private temporary file, removed on exit. jpeglib reads only from paths."""

    def __init__(self, data: bytes):
        self.data, self.fd, self.tmp = data, None, None

    def __enter__(self) -> str:
        if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
            self.fd = os.memfd_create("jpw-stream")
            with open(self.fd, "wb", closefd=False) as f:  # writes it all (os.write may stop short)
                f.write(self.data)
            return f"/proc/self/fd/{self.fd}"
        fd, self.tmp = tempfile.mkstemp(suffix=".jpg")
        with os.fdopen(fd, "wb") as f:
            f.write(self.data)
        return self.tmp

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
        if self.tmp is not None:
            os.unlink(self.tmp)
