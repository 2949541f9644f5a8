"""The weights gallery behind the web page: each tensor's figures and pictures at a quality,
from the packages the store serves. No HTTP here; ``routes/page.py`` is its shell.

A tensor is drawn as the matrix it is coded as (``view2d``). Where a row is a square of 3×3 to
32×32 values (the MNIST MLP's 784 = 28², a convolution's 5×5 kernels) each row is a tile,
as the original experiment showed layer 1; otherwise the matrix is cut into windows of
``WINDOW``×``WINDOW`` values. Either way one picture (a page) stays small: a large tensor is
paged, never sent whole.
"""

from __future__ import annotations

import io
import math
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from jpegweights.codec import decode, summarize
from jpegweights.codec.tiles import view2d

from .errors import GalleryError

TILES_PER_PAGE = 512  # the MNIST MLP's layer 1 on one page, as the experiment showed it
TILE_COLUMNS = 16  # a page of 512 28×28 tiles is 464×928 pixels: three fit side by side
MAX_TILE = 32  # a page of 512 tiles of 32×32 is 528×1056 pixels
WINDOW = 256  # values per side of a matrix page
Kind = Literal["original", "coded", "difference"]


@dataclass(frozen=True)
class View:
    rows: int
    cols: int
    tile: int  # side of a square tile per row; 0: matrix windows

    @classmethod
    def of(cls, shape: list[int]) -> View:
        rows, cols = view2d(tuple(shape))
        side = math.isqrt(cols)
        return cls(rows, cols, side if side * side == cols and 3 <= side <= MAX_TILE else 0)

    @property
    def pages(self) -> int:
        if self.tile:
            return math.ceil(self.rows / TILES_PER_PAGE)
        return math.ceil(self.rows / WINDOW) * math.ceil(self.cols / WINDOW)

    def to_json(self) -> dict:
        return {
            "layout": "tiles" if self.tile else "matrix",
            "tile": self.tile or None,
            "pages": self.pages,
            "window": None if self.tile else WINDOW,
        }

    def units(self, m: np.ndarray, page: int) -> list[tuple[np.ndarray, tuple[int, int]]]:
        """The page's pieces of the (rows, cols) matrix ``m``: (values, (top, left) in pixels)."""
        if self.tile:
            first = page * TILES_PER_PAGE
            rows = m[first : first + TILES_PER_PAGE]
            step = self.tile + 1  # one pixel of gap between tiles
            return [
                (r.reshape(self.tile, self.tile), ((i // TILE_COLUMNS) * step, (i % TILE_COLUMNS) * step))
                for i, r in enumerate(rows)
            ]
        across = math.ceil(self.cols / WINDOW)
        top, left = (page // across) * WINDOW, (page % across) * WINDOW
        return [(m[top : top + WINDOW, left : left + WINDOW], (0, 0))]


# Keyed by file and content (a package's ETag, a float source's mtime), so a replaced file is
# never served from a cache. The pictures of one page (three kinds) and its neighbours reuse
# one decode; two tensors at most are held (MiniLM's embedding table is 47 MB a copy).
Source = tuple[Path, int] | None  # the float weights' file and mtime_ns
# A tensor listing decodes the whole package and reads the float weights: one at a time (two
# copies of a model at most), and its rows (a few figures per tensor) kept for every quality a
# page may ask of each model, so that cycling through qualities never decodes twice.
LISTINGS = 512
_whole = threading.Lock()


@lru_cache(maxsize=32)
def summary(package: Path, etag: str) -> dict:
    return summarize(package.read_bytes())


@lru_cache(maxsize=2)
def pair(package: Path, etag: str, source: Source, tensor: str) -> tuple[np.ndarray | None, np.ndarray]:
    """(float, coded) matrices of one tensor; float is None without a source that has it."""
    if tensor not in {t["name"] for t in summary(package, etag)["tensors"]}:
        raise GalleryError(f"the model has no tensor {tensor[:80]!r}")
    coded = matrix(decode(package.read_bytes(), workers=1, names=[tensor])[tensor])
    original = None
    if source is not None:
        from safetensors import safe_open

        with safe_open(str(source[0]), framework="pt") as f:
            if tensor in f.keys():
                original = matrix(f.get_tensor(tensor))
    return (original if original is not None and original.shape == coded.shape else None), coded


def matrix(t: torch.Tensor) -> np.ndarray:
    rows, cols = view2d(t.shape)
    return t.detach().to(torch.float32).reshape(rows, cols).cpu().numpy()


@lru_cache(maxsize=LISTINGS)
def tensors(package: Path, etag: str, source: Source) -> tuple[dict, ...]:
    """Every tensor of a package: its coding, bytes, how it is drawn and, with a float source,
    its relative error ‖coded − float‖ / ‖float‖."""
    with _whole:
        return _tensors(package, etag, source)


def _tensors(package: Path, etag: str, source: Source) -> tuple[dict, ...]:
    coded = decode(package.read_bytes())
    originals = _load_source(source)
    rows = []
    for t in summary(package, etag)["tensors"]:
        name = t["name"]
        error = None
        if name in originals and originals[name].shape == coded[name].shape:
            a, b = originals[name].double(), coded[name].double()
            norm = float(a.norm())
            error = float((b - a).norm()) / norm if norm > 0 else float((b - a).norm())
        rows.append(
            {
                **{k: t[k] for k in ("name", "shape", "dtype", "coding", "quality", "bytes")},
                "relative_error": error,
                "view": View.of(t["shape"]).to_json(),
            }
        )
    return tuple(rows)


def _load_source(source: Source) -> dict[str, torch.Tensor]:
    if source is None:
        return {}
    from safetensors.torch import load_file

    return load_file(str(source[0]))


def render(original: np.ndarray | None, coded: np.ndarray, page: int, kind: Kind) -> bytes:
    """One page of a tensor as a greyscale PNG. Each tile (or window) is scaled by the float
    values' range in it (without a float source, the coded values'): the original and the coded
    pictures share that scale, and the difference (coded − original, mid-grey meaning zero) is
    drawn on it too: what looks small there is small."""
    from PIL import Image

    view = View.of(list(coded.shape))
    if not 0 <= page < view.pages:
        raise GalleryError(f"page {page} is out of range: the tensor has {view.pages} page(s)")
    if kind != "coded" and original is None:
        raise GalleryError(f"the {kind} picture needs the model's float weights, which the store does not have")
    reference = original if original is not None else coded
    pieces = zip(view.units(reference, page), view.units(coded, page))
    canvas: np.ndarray | None = None
    for (ref, (top, left)), (cod, _) in pieces:
        if view.tile:
            lo, hi = float(ref.min()), float(ref.max())
        else:  # a window of a whole matrix: a few outliers must not grey out the rest
            lo, hi = (float(v) for v in np.percentile(ref, [0.5, 99.5]))
        span = hi - lo if hi > lo else 1.0
        if kind == "difference":
            pixels = 127.5 + (cod - ref) / span * 255.0
        else:
            pixels = ((ref if kind == "original" else cod) - lo) / span * 255.0
        if canvas is None:
            canvas = np.full(_page_size(view, page), 255 if view.tile else 0, dtype=np.uint8)
        canvas[top : top + pixels.shape[0], left : left + pixels.shape[1]] = np.clip(np.rint(pixels), 0, 255).astype(
            np.uint8
        )
    out = io.BytesIO()
    Image.fromarray(canvas).save(out, format="PNG", optimize=False, compress_level=1)
    return out.getvalue()


def _page_size(view: View, page: int) -> tuple[int, int]:
    if view.tile:
        count = min(TILES_PER_PAGE, view.rows - page * TILES_PER_PAGE)
        step = view.tile + 1
        return math.ceil(count / TILE_COLUMNS) * step - 1, min(count, TILE_COLUMNS) * step - 1
    across = math.ceil(view.cols / WINDOW)
    top, left = (page // across) * WINDOW, (page % across) * WINDOW
    return min(WINDOW, view.rows - top), min(WINDOW, view.cols - left)
