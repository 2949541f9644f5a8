"""The ``jpeg`` coding: a tensor's 8-bit codes as grayscale JPEG atlases, an affine range per row.

>>> settings = EncodeConfig(quality=90).for_tensor("fc.weight")
>>> coded = encode("fc.weight", w, settings)        # settings.qtable and .layout: not "auto"
>>> w2 = coded.decode()

Decoding is cut into jobs, one per atlas (``jobs``), so that a package's atlases decode in a
thread pool (``codec.decoding``); ``decode`` runs one tensor's jobs here, or as one nvJPEG batch
on CUDA.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from .. import atlas as atlas_mod
from .. import compensate
from .. import jpeg as stream
from ..buffers import dequantize, empty_float32
from ..config import TensorSettings
from ..errors import ConfigError, JpegDecodeError
from ..manifest import entry_header
from ..tiles import WEIGHTED_REACH, affine_representable, parse_layout, quantize_rows, view2d
from .coded import Coded, base_entry, row_ranges

CLAMP_MARGINS = (2, 4, 8, 16, 32, 64)
Job = tuple[Callable[..., None], dict[str, Any]]  # (fill, atlas): fill(atlas) or fill(atlas, decoded image)


def encode(name: str, t: torch.Tensor, settings: TensorSettings, factor: torch.Tensor | None = None) -> Coded:
    """Code one tensor as 8-bit grayscale JPEG atlases with affine ranges stored per row, at the
    settings' quality, ``qtable`` (``standard`` or ``flat``) and ``layout``.

    ``outliers`` (k): values more than k standard deviations from their row's mean (the
    tensor's, under ``ranges="tensor"``) are stored apart, in float16, and the ranges clipped
    to mean ± k·std, so the other values get the finer steps. ``clamp_free``: no block's
    decoded pixels need clamping to 0..255 (``without_clamping``). ``factor``: error
    compensation (``compensate.factor`` of the inputs' second moment; the matrix layout, no
    outliers), or a lookup table's row weights (``compensate.row_weights``: coarser steps for
    the rows used least)."""
    rows, cols = view2d(t.shape)
    kind, tile = parse_layout(settings.layout, tuple(t.shape))
    weights, factor = _split(t, factor, kind, settings.outliers)
    matrix = t.reshape(rows, cols)
    k = settings.outliers
    far = find_outliers(matrix, k, settings.ranges) if k is not None and rows * cols < 1 << 31 else None
    aff = quantize_rows(matrix, k if far is not None else settings.clip_sigma, settings.ranges, weights=weights)
    table = stream.qtable(settings.qtable, settings.quality)
    q = aff.q.numpy() if factor is None else compensate.compensated(matrix, aff, factor, table)  # (rows, cols) uint8
    entry = {
        **base_entry(t, "jpeg"), "quality": settings.quality, "qtable": settings.qtable, "layout": kind,
        "tile": list(tile) if tile else None, "scale": f"{name}/scale", "offset": f"{name}/offset", "atlases": [],
    }  # fmt: skip
    stored = {entry["scale"]: aff.scale, entry["offset"]: aff.offset}
    if far is not None:
        entry |= {"outliers": f"{name}/outliers", "outlier_values": f"{name}/outlier_values"}
        stored[entry["outliers"]] = far.to(torch.int32)
        stored[entry["outlier_values"]] = matrix.reshape(-1)[far].to(torch.float16)
    for i, (plan, image) in enumerate(_atlases(q, kind, tile, settings.max_atlas_pixels)):
        key = f"{name}/jpeg/{i}"
        data = stream.encode(image, table)
        if settings.clamp_free:
            data = without_clamping(image, table, data)
        stored[key] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        entry["atlases"].append({"key": key, **plan})
    return Coded(name, entry, stored)


def _split(
    t: torch.Tensor, factor: torch.Tensor | None, kind: str, outliers: float | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(row weights, compensation factor)`` from ``factor``: a vector is a lookup table's row
    weights (dropped where centred coarse steps could leave the dtype's range), a matrix a
    compensation factor (which needs the matrix layout and no outliers apart)."""
    weights = factor if isinstance(factor, torch.Tensor) and factor.dim() == 1 else None
    factor = None if weights is not None else factor
    if factor is not None and (kind != "matrix" or outliers is not None):
        raise ConfigError("error compensation needs the matrix layout and no outliers apart")
    if weights is not None and not affine_representable(t, WEIGHTED_REACH):
        weights = None
    return weights, factor


def _atlases(
    q: np.ndarray, kind: str, tile: tuple[int, int] | None, max_pixels: int
) -> list[tuple[dict[str, Any], np.ndarray]]:
    """``(plan, image)`` per atlas of the ``(rows, cols)`` uint8 codes in ``kind``'s layout."""
    rows, cols = q.shape
    if kind == "rows":
        return [(p, atlas_mod.pack_rows(q, tile, p)) for p in atlas_mod.plan_rows(rows, tile, max_pixels)]
    return [(p, atlas_mod.pack_matrix(q, p)) for p in atlas_mod.plan_matrix(rows, cols, max_pixels)]


def without_clamping(image: np.ndarray, table: list[int], data: bytes) -> bytes:
    """``data`` (``image`` coded with ``table``) coded again until no block has a pixel that
    decodes outside 0..255. libjpeg clamps such pixels and the compressed domain, which
    computes from the coefficients, does not; without them both use the same weights, up to
    libjpeg's rounding. Each round pulls the pixels of the blocks that clamp to within a growing
    margin of mid-range, those blocks only (JPEG codes blocks independently); after the last
    margin, what still clamps is left (the compressed domain reports it)."""
    from ..coefficients import BLOCK, clipping_blocks  # jpeglib: imported only where clamp_free is asked for

    for margin in CLAMP_MARGINS:
        bad = clipping_blocks(data, *image.shape)
        if not bad.any():
            break
        mask = np.kron(bad, np.ones((BLOCK, BLOCK), dtype=bool))[: image.shape[0], : image.shape[1]]
        image = np.where(mask, np.clip(image, margin, 255 - margin), image).astype(np.uint8)
        data = stream.encode(image, table)
    return data


def find_outliers(x: torch.Tensor, k: float, ranges: str) -> torch.Tensor | None:
    """Flat positions of the values of ``x`` more than ``k`` std from their mean (per row, or
    over the tensor), whose float16 is finite; None if there are none."""
    x = x.double()
    stats = x if ranges == "row" else x.reshape(1, -1)
    mean, std = stats.mean(dim=1, keepdim=True), stats.std(dim=1, correction=0, keepdim=True)
    if ranges != "row":
        mean, std = mean.expand(len(x), 1), std.expand(len(x), 1)
    far = ((x - mean).abs() > k * std) & (x.abs() <= torch.finfo(torch.float16).max)
    index = far.reshape(-1).nonzero().squeeze(1)
    return index if len(index) else None


# ---------------------------------------------------------------- decoding


def decode(
    name: str, entry: dict[str, Any], stored: Mapping[str, torch.Tensor], device: str | torch.device
) -> torch.Tensor:
    """Rebuild one JPEG entry: its atlases one after another on the CPU, one nvJPEG batch on CUDA."""
    out, tensor_jobs = jobs(name, entry, stored, device)
    if torch.device(device).type == "cuda":
        images = stream.decode_batch([stored[a["key"]] for a in entry["atlases"]], device)
        for (fill, a), image in zip(tensor_jobs, images):
            fill(a, image)
    else:
        for fill, a in tensor_jobs:
            fill(a)
    return finish(name, entry, stored, out)


def jobs(
    name: str, entry: dict[str, Any], stored: Mapping[str, torch.Tensor], device: str | torch.device
) -> tuple[torch.Tensor, list[Job]]:
    """A JPEG entry's float32 ``(rows, cols)`` output and one job per atlas: ``fill(atlas)``
    decodes the atlas on the CPU, ``fill(atlas, image)`` takes it decoded; either way its
    pixels are dequantized into their place in the output. Jobs may run in any order, in
    parallel: each writes only its own atlas's cells. ``finish`` completes the tensor."""
    _, shape = entry_header(name, entry)
    scale, offset = row_ranges(entry, stored, device)
    layout, tile = entry["layout"], tuple(entry["tile"]) if entry["tile"] else None
    out = empty_float32(view2d(shape), device)

    def fill(a: dict[str, Any], image: torch.Tensor | None = None) -> None:
        if image is None:
            try:
                image = stream.decode(stored[a["key"]])
            except JpegDecodeError as exc:
                raise JpegDecodeError(f"atlas {a['key']!r}: {exc}", tensor=name) from exc
        if tuple(image.shape) != (a["height"], a["width"]):
            raise JpegDecodeError(
                f"atlas {a['key']!r} decoded to {tuple(image.shape)}, expected {a['height']}x{a['width']}", tensor=name
            )
        r, c, q = atlas_mod.unpack(image, layout, tile, a)
        dequantize(q, scale[r], offset[r], out[r, c])

    return out, [(fill, a) for a in entry["atlases"]]


def finish(name: str, entry: dict[str, Any], stored: Mapping[str, torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """A JPEG entry's float32 matrix, its jobs done, with its outliers put back, in its dtype and shape."""
    dtype, shape = entry_header(name, entry)
    if "outliers" in entry:
        index = stored[entry["outliers"]].to(out.device, torch.int64)
        out.view(-1)[index] = stored[entry["outlier_values"]].to(out.device, torch.float32)
    return out.to(dtype).view(shape)
