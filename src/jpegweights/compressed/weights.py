"""A coded matrix kept as its JPEG coefficients: ``W x`` computed without rebuilding ``W``.

Each 8x8 JPEG block is ``D^T K D``, with ``D`` the orthonormal 8-point DCT and ``K`` the
dequantized coefficients (mostly zero at low quality). So a matrix-layout tensor is
``P = 128 + B_out^T K B_in`` (``B`` block-diagonal in ``D``) and

    W x = (offset + 128 scale) * sum(x) + scale * B_out^T (K (B_in x))

1. an 8-point DCT of each 8-chunk of ``x``; 2. a sparse product with ``K``; 3. an 8-point
inverse DCT of each 8-chunk of the result; 4. the per-row affine. A ``rows`` tile (each row an
``h x w`` image, the seed's 28x28) does not line up with the 8x8 blocks, so there ``x`` is laid
out as an image at each offset a tile can have modulo 8, blockwise DCT'd, and one sparse matrix
maps those coefficients straight to the rows (a block that straddles two tiles appears in both).

The coefficients come from the JPEG streams themselves (``codec.coefficients``: libjpeg's Huffman decode
without its IDCT), after libjpeg-turbo has decoded the same stream strictly: a corrupt stream
raises ``JpegDecodeError`` before any coefficient is read. The sparse layout is compact: int16
dequantized values and int16 column indices (int32 past 32,767 columns), int32 row pointers,
so 4 bytes per kept coefficient.

>>> matrices = load_matrices(open("model.jpw", "rb").read())
>>> y = matrices["1.weight"].matmul(x)          # (batch, 784) -> (batch, 512)
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from jpegweights.codec.coefficients import BLOCK, DCT32, clamped, exact_pixels, read_coefficients
from jpegweights.codec.container import read
from jpegweights.codec.errors import DenseOnlyError, JpegDecodeError
from jpegweights.codec.manifest import affine, check_manifest, entry_header
from jpegweights.codec.tiles import ceil_to, view2d

# torch marks CSR tensors as beta on every construction; the product used here is stable.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state", category=UserWarning)
DCT_ON: dict[str, torch.Tensor] = {}  # device -> DCT32 there: copied to a GPU once, not per call


def _dct_on(device: torch.device) -> torch.Tensor:
    if device.type == "cpu":
        return DCT32
    return DCT_ON.setdefault(str(device), DCT32.to(device))


# ---------------------------------------------------------------- the compact matrices


@dataclass
class Sparse:
    """A CSR matrix of integers, stored compactly; ``to_torch`` widens it for the product."""

    crow: torch.Tensor  # (n_rows + 1,) int32
    col: torch.Tensor  # (nnz,) int16 or int32
    val: torch.Tensor  # (nnz,) int16: dequantized coefficients
    shape: tuple[int, int]

    @classmethod
    def from_coo(cls, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int]) -> Sparse:
        """Entries whose columns are already in order within each row (the builders' order)."""
        if len(rows) and not bool(np.all(rows[1:] >= rows[:-1])):
            order = np.argsort(rows, kind="stable")
            rows, cols, vals = rows[order], cols[order], vals[order]
        crow = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=shape[0]))])
        col_dtype = np.int16 if shape[1] <= np.iinfo(np.int16).max else np.int32
        return cls(
            torch.from_numpy(crow.astype(np.int32)),
            torch.from_numpy(cols.astype(col_dtype)),
            torch.from_numpy(vals.astype(np.int16)),
            shape,
        )

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.crow, self.col, self.val))

    def to(self, device: str | torch.device) -> Sparse:
        return Sparse(self.crow.to(device), self.col.to(device), self.val.to(device), self.shape)

    def to_torch(self) -> torch.Tensor:
        return torch.sparse_csr_tensor(
            self.crow, self.col.to(torch.int32), self.val.to(torch.float32), self.shape, check_invariants=False
        )


@dataclass
class CoefficientMatrix:
    """A JPEG-coded ``(rows, cols)`` tensor kept as its sparse dequantized DCT coefficients.

    ``matmul(x)`` is ``x @ W.T`` for the matrix that the coefficients code exactly (a float
    IDCT, no rounding or clamping): ``dense()`` builds that matrix, for reference. ``clipped``
    counts the pixels whose exact value falls outside 0..255, which libjpeg clamps;
    ``max_pixel_difference`` is the largest gap to libjpeg's own decode (its integer IDCT
    rounds: under 1 without clipping)."""

    name: str
    rows: int
    cols: int
    layout: str  # "matrix" or "rows"
    coefficients: Sparse
    scale: torch.Tensor  # (rows,) float32
    offset: torch.Tensor  # (rows,) float32
    tile: tuple[int, int] | None = None  # rows layout: each row an h x w image...
    phases: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())  # ...at these offsets modulo 8 (rows, columns)
    canvas: tuple[int, int] = (0, 0)  # ...each in a canvas of whole blocks this size
    clipped: int = 0
    max_pixel_difference: float = 0.0
    shift: torch.Tensor = field(init=False, repr=False)  # offset + 128 * scale: what a row adds per unit of sum(x)
    transforms: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )  # device -> ``_analysis``

    def __post_init__(self) -> None:
        self.shift = self.offset + 128 * self.scale

    @property
    def nbytes(self) -> int:
        """Resident bytes: coefficients, scales and offsets."""
        return self.coefficients.nbytes + (self.scale.numel() + self.offset.numel()) * 4

    @property
    def density(self) -> float:
        """Kept coefficients per weight."""
        return self.coefficients.val.numel() / (self.rows * self.cols)

    def to(self, device: str | torch.device) -> CoefficientMatrix:
        return replace(
            self, coefficients=self.coefficients.to(device), scale=self.scale.to(device), offset=self.offset.to(device)
        )

    def scaled(self, row_scale: torch.Tensor) -> CoefficientMatrix:
        """The matrix with each row multiplied by ``row_scale`` (a BatchNorm folded into it)."""
        g = row_scale.to(self.scale)
        return replace(self, scale=self.scale * g, offset=self.offset * g)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., cols)`` -> ``(..., rows)``: ``x @ W.T``."""
        lead = x.shape[:-1]
        x = x.reshape(-1, self.cols).to(torch.float32)
        core = self._matrix_core(x) if self.layout == "matrix" else self._rows_core(x)  # (n, rows)
        y = torch.addcmul(x.sum(dim=1, keepdim=True) * self.shift, core, self.scale)
        return y.reshape(*lead, self.rows)

    def _matrix_core(self, x: torch.Tensor) -> torch.Tensor:
        d = _dct_on(x.device)
        n, (rows_pad, cols_pad) = len(x), self.coefficients.shape
        if cols_pad != self.cols:
            x = torch.nn.functional.pad(x, (0, cols_pad - self.cols))
        xt = (x.reshape(-1, BLOCK) @ d.T).view(n, cols_pad)  # the DCT of each 8-chunk of x
        z = self._product(xt)  # (n, rows_pad)
        return (z.reshape(-1, BLOCK) @ d).view(n, rows_pad)[:, : self.rows]  # the inverse DCT of each 8-chunk of rows

    def _rows_core(self, x: torch.Tensor) -> torch.Tensor:
        left, right = _analysis(self, x.device)
        image = x.view(len(x), 1, 1, *self.tile)  # (n, 1, 1, th, tw)
        g = (
            left @ image @ right
        )  # (n, phases y, phases x, canvas h, canvas w): blockwise DCTs of x placed at each offset
        return self._product(g.view(len(x), -1))

    def _product(self, g: torch.Tensor) -> torch.Tensor:
        """``(n, coefficients' columns)`` -> ``(n, coefficients' rows)`` through the sparse
        matrix; one sample goes through torch's matrix-vector kernel, faster for a vector."""
        k = self.coefficients.to_torch()
        if len(g) == 1:
            return torch.mv(k, g[0])[None]
        return (k @ g.T.contiguous()).T

    def dense(self) -> torch.Tensor:
        """The ``(rows, cols)`` float32 matrix the coefficients code (``matmul`` of the identity)."""
        eye = torch.eye(self.cols, dtype=torch.float32, device=self.scale.device)
        return self.matmul(eye).T.contiguous()


def _placed_dct(offsets: tuple[int, ...], side: int, canvas: int) -> torch.Tensor:
    """``(len(offsets), canvas, side)``: row k maps a length-``side`` signal, placed at
    ``offsets[k]`` in ``canvas`` zeros, to the 8-point DCTs of the canvas's 8-chunks."""
    out = torch.zeros(len(offsets), canvas, side)
    for k, start in enumerate(offsets):
        for i in range(side):
            block, j = divmod(start + i, BLOCK)
            out[k, block * BLOCK : (block + 1) * BLOCK, i] = DCT32[:, j]
    return out


def _analysis(m: CoefficientMatrix, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows layout's (left, right) transforms, shaped to broadcast over (n, phases y,
    phases x, canvas h, canvas w); tiny, built once per matrix and device."""
    key = str(device)
    if key not in m.transforms:
        (th, tw), (ch, cw) = m.tile, m.canvas
        left = _placed_dct(m.phases[0], th, ch)[:, None]  # (py, 1, ch, th)
        right = _placed_dct(m.phases[1], tw, cw).transpose(1, 2)[None]  # (1, px, tw, cw)
        m.transforms[key] = (left.to(device), right.to(device))
    return m.transforms[key]


def _dequantized(name: str, a: Mapping[str, Any], stored: Mapping[str, torch.Tensor]) -> tuple[np.ndarray, int, float]:
    """One atlas -> dequantized coefficients ``(nby, nbx, 8, 8)`` int32 (``[.., v, u]``), and
    its clipped pixel count and largest gap to libjpeg's pixels."""
    try:
        q, table, pixels = read_coefficients(stored[a["key"]], a["height"], a["width"])
    except (JpegDecodeError, DenseOnlyError) as exc:
        raise type(exc)(f"atlas {a['key']!r}: {exc}", tensor=name) from exc
    k = q.astype(np.int32) * table.astype(np.int32)
    if np.abs(k).max(initial=0) > np.iinfo(np.int16).max:
        raise DenseOnlyError(f"atlas {a['key']!r}: coefficients beyond int16", tensor=name)
    exact = exact_pixels(k, a["height"], a["width"])
    clipped = int(clamped(exact).sum())
    return k, clipped, float((exact - torch.from_numpy(pixels).float()).abs().max()) if exact.numel() else 0.0


def coefficient_matrix(name: str, entry: Mapping[str, Any], stored: Mapping[str, torch.Tensor]) -> CoefficientMatrix:
    """A checked JPEG entry's coefficients as one sparse matrix (see the module docstring).
    Raises ``JpegDecodeError`` for a corrupt stream, ``DenseOnlyError`` where the stream or
    the atlas layout does not allow it (the tensor then stays dense)."""
    _, shape = entry_header(name, entry)
    rows, cols = view2d(shape)
    if "outliers" in entry:
        raise DenseOnlyError("outliers are stored apart from the JPEG", tensor=name)
    scale, offset = (v.contiguous() for v in affine(entry, stored))
    parts, clipped, gap = [], 0, 0.0
    if entry["layout"] == "matrix":
        for a in entry["atlases"]:
            if a["row"] % BLOCK or a["col"] % BLOCK:
                raise DenseOnlyError("atlases do not start on 8x8 block boundaries", tensor=name)
            k, c, g = _dequantized(name, a, stored)
            clipped, gap = clipped + c, max(gap, g)
            by, v, bx, u = np.nonzero(
                k.transpose(0, 2, 1, 3)
            )  # row of K: 8 * (block row) + v; column: 8 * (block col) + u
            parts.append((a["row"] + BLOCK * by + v, a["col"] + BLOCK * bx + u, k[by, bx, v, u]))
        sparse = _concat(parts, (ceil_to(rows, BLOCK), ceil_to(cols, BLOCK)))
        return CoefficientMatrix(
            name, rows, cols, "matrix", sparse, scale, offset, clipped=clipped, max_pixel_difference=gap
        )
    th, tw = entry["tile"]
    py = tuple(sorted({(i * th) % BLOCK for i in range(BLOCK)}))  # the offsets a tile can have in its block
    px = tuple(sorted({(j * tw) % BLOCK for j in range(BLOCK)}))
    ch, cw = ceil_to(max(py) + th, BLOCK), ceil_to(max(px) + tw, BLOCK)
    for a in entry["atlases"]:
        k, c, g = _dequantized(name, a, stored)
        clipped, gap = clipped + c, max(gap, g)
        tiles = np.arange(a["count"])
        oy, ox = (tiles // a["grid"][1]) * th, (tiles % a["grid"][1]) * tw  # each tile's first pixel
        for iy, y in enumerate(py):
            for ix, x in enumerate(px):
                sel = tiles[(oy % BLOCK == y) & (ox % BLOCK == x)]
                nby, nbx = -(-(y + th) // BLOCK), -(-(x + tw) // BLOCK)  # the blocks such a tile touches
                by = oy[sel, None, None] // BLOCK + np.arange(nby)[None, :, None]
                bx = ox[sel, None, None] // BLOCK + np.arange(nbx)[None, None, :]
                t, p, v, q, u = np.nonzero(k[by, bx].transpose(0, 1, 3, 2, 4))  # k[by, bx]: (tiles, nby, nbx, 8, 8)
                column = ((iy * len(px) + ix) * ch + BLOCK * p + v) * cw + BLOCK * q + u
                parts.append((a["first"] + sel[t], column, k[by[t, p, 0], bx[t, 0, q], v, u]))
    sparse = _concat(parts, (rows, len(py) * len(px) * ch * cw))
    return CoefficientMatrix(
        name, rows, cols, "rows", sparse, scale, offset, (th, tw), (py, px), (ch, cw), clipped, gap
    )


def _concat(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], shape: tuple[int, int]) -> Sparse:
    if not parts:
        parts = [(np.zeros(0, np.int64),) * 3]
    return Sparse.from_coo(*(np.concatenate([p[i] for p in parts]) for i in range(3)), shape)


def load_matrices(
    data: bytes | bytearray | memoryview, names: Collection[str] | None = None
) -> tuple[dict[str, CoefficientMatrix], dict[str, str]]:
    """A package's JPEG-coded tensors (those in ``names``, if given) as coefficient matrices:
    ``(matrices, kept_dense)``, the second naming each JPEG tensor left out and why. The whole
    package is checked first; a corrupt stream raises ``JpegDecodeError``."""
    stored, manifest = read(data)
    check_manifest(manifest, stored)
    matrices, dense = {}, {}
    for name, entry in manifest["tensors"].items():
        if entry["coding"] != "jpeg" or (names is not None and name not in names):
            continue
        try:
            matrices[name] = coefficient_matrix(name, entry, stored)
        except DenseOnlyError as exc:
            dense[name] = str(exc)
    return matrices, dense
