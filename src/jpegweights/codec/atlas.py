"""Packing a tensor's 8-bit tiles into as few JPEG-sized images (atlases) as possible, and back.

Two layouts over the ``(rows, cols)`` view of a tensor:

- ``rows``: each row is an ``h×w`` tile (the seed's 28×28 images), packed edge to edge in a
  grid. (Padding tiles to a multiple of 8 so that no 8×8 JPEG block straddles two tiles was
  measured: 17% more bytes for the same error on the seed MLP, so tiles are packed tight.)
- ``matrix``: the matrix itself is the image, cut into bands (and column chunks past JPEG's
  65,500-pixel side, libjpeg's limit) of at most ``max_pixels`` each, so that atlases decode in parallel.

An atlas is described by a small JSON dict that travels in the manifest; ``unpack`` uses it
to find where each decoded pixel belongs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .jpeg import MAX_SIDE
from .tiles import ceil_to

BLOCK = 8  # JPEG's DCT block side


def plan_rows(n: int, tile: tuple[int, int], max_pixels: int) -> list[dict[str, Any]]:
    """Grid placement of ``n`` tiles: a list of atlases {first, count, grid, height, width}."""
    ph, pw = tile
    gw = max(1, min(MAX_SIDE // pw, math.ceil(math.sqrt(n * ph / pw))))
    gh_max = max(1, min(MAX_SIDE // ph, max_pixels // (ph * pw * gw)))
    atlases, first = [], 0
    while first < n:
        count = min(n - first, gw * gh_max)
        gh = math.ceil(count / gw)
        atlases.append({"first": first, "count": count, "grid": [gh, gw], "height": gh * ph, "width": gw * pw})
        first += count
    return atlases


def plan_matrix(rows: int, cols: int, max_pixels: int) -> list[dict[str, Any]]:
    """Bands of the matrix: a list of atlases {row, col, height, width}."""
    n_chunks = math.ceil(cols / MAX_SIDE)
    chunk = ceil_to(math.ceil(cols / n_chunks), BLOCK) if n_chunks > 1 else cols
    atlases = []
    for col in range(0, cols, chunk):
        width = min(chunk, cols - col)
        band = max(BLOCK, min(MAX_SIDE - MAX_SIDE % BLOCK, max_pixels // width // BLOCK * BLOCK))
        for row in range(0, rows, band):
            atlases.append({"row": row, "col": col, "height": min(band, rows - row), "width": width})
    return atlases


def pack_rows(q: np.ndarray, tile: tuple[int, int], atlas: dict[str, Any]) -> np.ndarray:
    """(rows, h*w) uint8 -> one atlas image (height, width) uint8."""
    th, tw = tile
    gh, gw = atlas["grid"]
    tiles = np.zeros((gh * gw, th, tw), dtype=np.uint8)  # unused grid cells stay 0
    tiles[: atlas["count"]] = q[atlas["first"] : atlas["first"] + atlas["count"]].reshape(-1, th, tw)
    # (gh*gw, th, tw) -> (gh, th, gw, tw) -> (gh*th, gw*tw)
    return np.ascontiguousarray(tiles.reshape(gh, gw, th, tw).transpose(0, 2, 1, 3).reshape(gh * th, gw * tw))


def pack_matrix(q: np.ndarray, atlas: dict[str, Any]) -> np.ndarray:
    r, c = atlas["row"], atlas["col"]
    return np.ascontiguousarray(q[r : r + atlas["height"], c : c + atlas["width"]])


def unpack(
    image: torch.Tensor, layout: str, tile: tuple[int, int] | None, atlas: dict[str, Any]
) -> tuple[slice, slice, torch.Tensor]:
    """A decoded atlas -> (row slice, col slice, uint8 values) of the (rows, cols) matrix."""
    if layout == "matrix":
        r, c = atlas["row"], atlas["col"]
        return slice(r, r + atlas["height"]), slice(c, c + atlas["width"]), image
    th, tw = tile
    gh, gw = atlas["grid"]
    first, count = atlas["first"], atlas["count"]
    # (gh*th, gw*tw) -> (gh, gw, th, tw) -> (count, th*tw); the reshape copies (uint8, cheap)
    tiles = image.view(gh, th, gw, tw).permute(0, 2, 1, 3).reshape(gh * gw, th * tw)[:count]
    return slice(first, first + count), slice(None), tiles
