"""``encode``/``decode``: a state_dict to a ``.jpw`` package and back.

>>> data = encode(model.state_dict(), EncodeConfig(quality=20))
>>> state = decode(data, device="cpu")          # dense tensors, original dtypes and shapes
>>> model.load_state_dict(state)
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import mmap
import os
from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import atlas as atlas_mod
from . import compensate, jpeg
from .config import EncodeConfig
from .container import DTYPE_NAMES, DTYPES, FORMAT_VERSION, PACKED_VERSION, Verify, digest_wins, read, read_file_pending, read_pending, write
from .errors import CodecError, ConfigError, InvalidTensorError, JpegDecodeError, ManifestError, show
from .manifest import FORMAT, affine, check_manifest, entry_header, stored_keys
from .tiles import RowAffine, parse_layout, quantize_rows, view2d


HUGE_PAGE = 2 << 20

# ---------------------------------------------------------------- encoding


@dataclass
class Coded:
    """One tensor's coded form: the manifest entry and the tensors it stores."""

    name: str
    entry: dict[str, Any]
    stored: dict[str, torch.Tensor]

    def decode(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """The dense tensor, rebuilt by the same code path as ``decode``."""
        return _decode_entry(self.name, self.entry, self.stored, device)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.stored.values())


def _check_input(name: str, t: Any) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise InvalidTensorError(f"expected a torch.Tensor, got {type(t).__name__}", tensor=name)
    if t.dtype not in DTYPE_NAMES:
        raise InvalidTensorError(f"unsupported dtype {t.dtype}", tensor=name)
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise InvalidTensorError(f"{bad} NaN/Inf values; refusing to encode", tensor=name)
    return t.detach().cpu()


def _base_entry(t: torch.Tensor, coding: str) -> dict[str, Any]:
    return {"coding": coding, "dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape)}


def encode_raw(name: str, t: torch.Tensor, dtype: str = "same") -> Coded:
    """Stored as it is; with ``dtype="float16"``, float32 and float64 tensors that float16 holds
    (every value finite after rounding) are stored in float16 and widened again on decode."""
    stored = t.contiguous()
    if dtype == "float16" and t.dtype in (torch.float32, torch.float64):
        half = t.to(torch.float16)
        if bool(torch.isfinite(half).all()):
            stored = half
    return Coded(name, {**_base_entry(t, "raw"), "key": name}, {name: stored})


def encode_int8(name: str, t: torch.Tensor, clip_sigma: float | None = None) -> Coded:
    aff = quantize_rows(t.reshape(view2d(t.shape)), clip_sigma)
    entry = {**_base_entry(t, "int8"), "key": f"{name}/q", "scale": f"{name}/scale", "offset": f"{name}/offset"}
    return Coded(name, entry, {entry["key"]: aff.q, entry["scale"]: aff.scale, entry["offset"]: aff.offset})


def encode_jpeg(
    name: str,
    t: torch.Tensor,
    quality: int,
    qtable: str = "standard",
    layout: str = "auto",
    *,
    clip_sigma: float | None = None,
    ranges: str = "row",
    max_atlas_pixels: int = 1 << 20,
    outliers: float | None = None,
    clamp_free: bool = False,
    factor: torch.Tensor | None = None,
) -> Coded:
    """Code one tensor as 8-bit grayscale JPEG atlases with affine ranges stored per row.

    ``outliers`` (k): values more than k standard deviations from their row's mean (the
    tensor's, under ``ranges="tensor"``) are stored apart, in float16, and the ranges clipped
    to mean ± k·std, so the other values get the finer steps. ``clamp_free``: no block's
    decoded pixels need clamping to 0..255 (``without_clamping``). ``factor``: error
    compensation (``compensate.factor`` of the inputs' second moment; the matrix layout, no
    outliers), or a lookup table's row weights (``compensate.row_weights``: coarser steps for
    the rows used least)."""
    rows, cols = view2d(t.shape)
    kind, tile = parse_layout(layout, tuple(t.shape))
    weights = factor if isinstance(factor, torch.Tensor) and factor.dim() == 1 else None
    factor = None if weights is not None else factor
    if factor is not None and (kind != "matrix" or outliers is not None):
        raise ConfigError("error compensation needs the matrix layout and no outliers apart")
    if weights is not None and not _affine_representable(t, WEIGHTED_REACH):  # centred coarse steps reach further
        weights = None
    matrix = t.reshape(rows, cols)
    far = _outliers(matrix, outliers, ranges) if outliers is not None and rows * cols < 1 << 31 else None
    aff: RowAffine = quantize_rows(matrix, outliers if far is not None else clip_sigma, ranges, weights=weights)
    table = jpeg.qtable(qtable, quality)
    q = aff.q.numpy() if factor is None else compensate.compensated(matrix, aff, factor, table)  # (rows, cols) uint8
    if kind == "rows":
        plans = atlas_mod.plan_rows(rows, tile, max_atlas_pixels)
        images = [atlas_mod.pack_rows(q, tile, p) for p in plans]
    else:
        plans = atlas_mod.plan_matrix(rows, cols, max_atlas_pixels)
        images = [atlas_mod.pack_matrix(q, p) for p in plans]
    entry = {
        **_base_entry(t, "jpeg"),
        "quality": quality,
        "qtable": qtable,
        "layout": kind,
        "tile": list(tile) if tile else None,
        "scale": f"{name}/scale",
        "offset": f"{name}/offset",
        "atlases": [],
    }
    stored = {entry["scale"]: aff.scale, entry["offset"]: aff.offset}
    if far is not None:
        entry |= {"outliers": f"{name}/outliers", "outlier_values": f"{name}/outlier_values"}
        stored[entry["outliers"]] = far.to(torch.int32)
        stored[entry["outlier_values"]] = matrix.reshape(-1)[far].to(torch.float16)
    for i, (plan, image) in enumerate(zip(plans, images)):
        key = f"{name}/jpeg/{i}"
        data = jpeg.encode(image, table)
        if clamp_free:
            data = without_clamping(image, table, data)
        stored[key] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        entry["atlases"].append({"key": key, **plan})
    return Coded(name, entry, stored)


CLAMP_MARGINS = (2, 4, 8, 16, 32, 64)


def without_clamping(image: np.ndarray, table: list[int], data: bytes) -> bytes:
    """``data`` (``image`` coded with ``table``) coded again until no block has a pixel that
    decodes outside 0..255. libjpeg clamps such pixels and the compressed domain, which
    computes from the coefficients, does not; without them both use the same weights, up to
    libjpeg's rounding. Each round pulls the pixels of the blocks that clamp to within a growing
    margin of mid-range, those blocks only (JPEG codes blocks independently); after the last
    margin, what still clamps is left (the compressed domain reports it)."""
    from .coefficients import BLOCK, clipping_blocks

    for margin in CLAMP_MARGINS:
        bad = clipping_blocks(data, *image.shape)
        if not bad.any():
            break
        mask = np.kron(bad, np.ones((BLOCK, BLOCK), dtype=bool))[: image.shape[0], : image.shape[1]]
        image = np.where(mask, np.clip(image, margin, 255 - margin), image).astype(np.uint8)
        data = jpeg.encode(image, table)
    return data


def _outliers(x: torch.Tensor, k: float, ranges: str) -> torch.Tensor | None:
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


def snr_db(x: torch.Tensor, y: torch.Tensor) -> float:
    """Signal-to-noise ratio of reconstruction ``y`` against ``x``, in dB."""
    x, y = x.double(), y.double()
    noise, signal = float(((x - y) ** 2).sum()), float((x**2).sum())
    if noise == 0:
        return math.inf
    return -math.inf if signal == 0 else 10 * math.log10(signal / noise)


def measure(coded: Coded, t: torch.Tensor) -> float:
    """SNR of one coded tensor against the original ``t``."""
    return snr_db(t, coded.decode())


def layouts_for(layout: str, shape: tuple[int, ...]) -> list[str]:
    """Under ``auto``, a square row length tries the seed's ``rows:s×s`` layout and the matrix."""
    if layout != "auto":
        return [layout]
    kind, tile = parse_layout("auto", shape)
    return [f"rows:{tile[0]}x{tile[1]}", "matrix"] if kind == "rows" else ["matrix"]


def cost(coded: Coded, snr: float, numel: int) -> float:
    """Rate-distortion cost: bits per value priced at 6.02 dB each (the high-rate slope)."""
    return 6.02 * coded.nbytes * 8 / numel - snr


# Under row weights a step is at most range / 15 and codes are centred (at most 120 steps below
# the row's minimum): |offset| + 255·step <= |lo| + 25·range <= 51·max|t|.
WEIGHTED_REACH = 51


def _affine_representable(t: torch.Tensor, reach: float = 2) -> bool:
    """Whether any per-row affine code of ``t`` decodes within float32's and the dtype's range
    (|offset| + 255 * scale <= 2 * max|t|, or ``reach`` times: the bound the reader checks)."""
    m = reach * float(t.double().abs().max()) if t.numel() else 0.0
    return m <= min(torch.finfo(torch.float32).max, torch.finfo(t.dtype).max) / 1.01


def settled_coding(name: str, t: torch.Tensor, config: EncodeConfig) -> str | None:
    """``"raw"`` or ``"int8"`` where ``choose`` codes the tensor so at every quality (its kind,
    size or values, or the config, decide); ``None`` where it measures JPEG codings (a tensor
    whose coding is ``auto`` can still come out int8 at a quality where int8 dominates)."""
    coding = config.coding_of(name)
    if not t.is_floating_point() or t.dim() < 2 or t.numel() == 0 or (coding == "auto" and t.numel() < config.lossless_below):
        return "raw"
    if not _affine_representable(t):  # values near the dtype's limits: 8-bit codes could overflow
        return "raw"
    if coding == "raw" or coding == "int8":
        return coding
    if coding == "auto" and t.numel() < config.int8_below:
        return "int8"
    return None


def choose(name: str, t: torch.Tensor, config: EncodeConfig, factor: torch.Tensor | None = None) -> Coded:
    """Code one tensor as the config says; ``auto`` settings are decided by measurement.

    - layout: among the candidate layouts, the lowest rate-distortion ``cost``;
    - qtable: ``standard`` if it keeps at least ``structure_ratio`` of the flat table's SNR
      (in dB) at the same quality: the tensor has the spatial structure JPEG's photographic
      table assumes. Otherwise ``flat``;
    - coding: int8 if it dominates the chosen JPEG (no more bytes, no lower SNR).
    See docs/codec.md for the measurements behind these rules. These are decided without
    ``factor``; a JPEG in the matrix layout is then coded with error compensation (or, given a
    lookup table's row weights, with each row's step by its weight).
    """
    settled = settled_coding(name, t, config)
    if settled == "raw":
        return encode_raw(name, t, config.raw_dtype)
    if settled == "int8":
        return encode_int8(name, t, config.clip_sigma)
    coding, quality, n = config.coding_of(name), config.quality_of(name), t.numel()
    options = dict(clip_sigma=config.clip_sigma, ranges=config.ranges, max_atlas_pixels=config.max_atlas_pixels, outliers=config.outliers, clamp_free=config.clamp_free)
    best: dict[str, tuple[Coded, float]] = {}  # qtable -> (coded, snr) with its best layout
    for table in jpeg.QTABLES if config.qtable == "auto" else (config.qtable,):
        scored = []
        for layout in layouts_for(config.layout_of(name), tuple(t.shape)):
            coded = encode_jpeg(name, t, quality, table, layout, **options)
            scored.append((coded, measure(coded, t)))
        best[table] = min(scored, key=lambda cs: cost(cs[0], cs[1], n))
    if len(best) == 2:
        std_snr, flat_snr = best["standard"][1], best["flat"][1]
        chosen = best["standard"] if std_snr >= config.structure_ratio * flat_snr else best["flat"]
    else:
        (chosen,) = best.values()
    if coding == "auto":
        int8 = encode_int8(name, t, config.clip_sigma)
        if int8.nbytes <= chosen[0].nbytes and measure(int8, t) >= chosen[1]:
            return int8
    coded = chosen[0]
    if factor is not None and coded.entry["layout"] == "matrix":
        coded = encode_jpeg(name, t, quality, coded.entry["qtable"], "matrix", **options, factor=factor)
    return coded


def factors(state: Mapping[str, torch.Tensor], hessians: Mapping[str, torch.Tensor] | None, config: EncodeConfig) -> dict[str, torch.Tensor]:
    """``compensate.factor`` of each named matrix's input second moment; a lookup table's
    ``(rows,)`` vector, ``compensate.row_weights``."""
    if not hessians:
        return {}
    if config.outliers is not None:
        raise ConfigError("error compensation (hessians) does not combine with outliers apart")
    unknown = sorted(set(hessians) - set(state))
    if unknown:
        raise ConfigError(f"hessians name tensors that are not in the state_dict: {show(unknown[:5])}")
    out = {}
    for name, h in hessians.items():
        rows, cols = view2d(state[name].shape)
        try:
            out[name] = compensate.row_weights(h, rows) if isinstance(h, torch.Tensor) and h.dim() == 1 else compensate.factor(h, cols)
        except CodecError as exc:
            raise type(exc)(str(exc), tensor=name) from None
    return out


def encode(
    state_dict: Mapping[str, torch.Tensor],
    config: EncodeConfig | None = None,
    architecture: dict[str, Any] | None = None,
    handler: dict[str, Any] | None = None,
    *,
    hessians: Mapping[str, torch.Tensor] | None = None,
) -> bytes:
    """Encode a state_dict into ``.jpw`` bytes (deterministic: same input, same bytes).

    Raises ``InvalidTensorError`` for NaN/Inf or unsupported dtypes and ``ConfigError`` for bad
    settings, both naming the tensor. ``architecture`` (how to build the module) and ``handler``
    (how to serve it) are stored as opaque JSON: see ``jpegweights.handlers``. ``hessians``:
    per matrix, the second moment ``Σ xᵀx`` of the inputs it multiplies, for error
    compensation (``jpegweights.codec.compensate``); the format does not change.
    """
    config = config or EncodeConfig()
    factor = factors(state_dict, hessians, config)
    for what, value in (("architecture", architecture), ("handler", handler)):
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{what} is not JSON: {exc}") from exc
    manifest: dict[str, Any] = {"format": FORMAT, "version": PACKED_VERSION if config.compact else FORMAT_VERSION, "tensors": {}}
    stored: dict[str, torch.Tensor] = {}
    for name, value in state_dict.items():
        t = _check_input(name, value)
        try:
            coded = choose(name, t, config, factor.get(name))
        except CodecError as exc:
            if exc.tensor is not None:
                raise
            raise type(exc)(str(exc), tensor=name) from exc
        clash = set(coded.stored) & (set(stored) | set(state_dict) - {name})
        if clash:
            raise ConfigError(f"stored key(s) {sorted(clash)} collide with other tensors' names", tensor=name)
        manifest["tensors"][name] = coded.entry
        stored.update(coded.stored)
        if config.compact:
            share_ranges(coded.entry, stored)
    if architecture is not None:
        manifest["architecture"] = architecture
    if handler is not None:
        manifest["handler"] = handler
    manifest["config"] = config.to_dict()
    return write(stored, manifest, packed=config.compact)


def share_ranges(entry: dict[str, Any], stored: dict[str, torch.Tensor]) -> None:
    """In ``stored``, the entry's scale and offset as one value each where every row has the
    same (format version 4)."""
    if "scale" not in entry:
        return
    scale, offset = stored[entry["scale"]], stored[entry["offset"]]
    if len(scale) > 1 and bool((scale == scale[0]).all()) and bool((offset == offset[0]).all()):
        stored[entry["scale"]], stored[entry["offset"]] = scale[:1].clone(), offset[:1].clone()


# ---------------------------------------------------------------- decoding


def _affine(entry: dict[str, Any], stored: Mapping[str, torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
    # (rows, 1) float32, broadcast over each row
    scale, offset = affine(entry, stored, device)
    return scale[:, None], offset[:, None]


def _decode_entry(name: str, entry: dict[str, Any], stored: Mapping[str, torch.Tensor], device) -> torch.Tensor:
    """Rebuild one dense tensor on ``device``, in its original dtype and shape (entry checked)."""
    dtype, shape = entry_header(name, entry)
    coding = entry["coding"]
    if coding == "raw":
        return stored[entry["key"]].to(device, dtype, copy=True)
    if coding == "int8":
        scale, offset = _affine(entry, stored, device)
        out = torch.empty(view2d(shape), dtype=torch.float32, device=device)
        return dequantize(stored[entry["key"]].to(device), scale, offset, out).to(dtype).view(shape)
    out, jobs = _jpeg_jobs(name, entry, stored, device)
    if torch.device(device).type == "cuda":
        images = jpeg.decode_batch([stored[a["key"]] for a in entry["atlases"]], device)  # nvJPEG, one batch
        for (fill, a), image in zip(jobs, images):
            fill(a, image)
    else:
        for fill, a in jobs:
            fill(a)
    return _finish(name, entry, stored, out)


def _finish(name: str, entry: dict[str, Any], stored: Mapping[str, torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """A JPEG entry's float32 matrix with its outliers put back, in its dtype and shape."""
    dtype, shape = entry_header(name, entry)
    if "outliers" in entry:
        index = stored[entry["outliers"]].to(out.device, torch.int64)
        out.view(-1)[index] = stored[entry["outlier_values"]].to(out.device, torch.float32)
    return out.to(dtype).view(shape)


def empty_float32(shape: tuple[int, int], device) -> torch.Tensor:
    """A new float32 tensor; on the CPU from ``HUGE_PAGE`` bytes, its memory advised to be backed
    by transparent huge pages before anything is written to it.

    Writing fresh memory costs a page fault per 4 KiB page: filling MiniLM's 91 MB took 48 ms on
    one core here, 11 ms in huge pages (benchmarks/decode_parts.py). The kernel's default
    (``madvise`` mode) grants them only on request, and torch asks only under
    THP_MEM_ALLOC_ENABLE. The tensor is torch's own, and stays an ordinary one; the advice is
    only advice, and is skipped where the platform has no ``madvise``."""
    out = torch.empty(shape, dtype=torch.float32, device=device)
    nbytes = 4 * out.numel()
    madvise = _madvise() if out.device.type == "cpu" and nbytes >= HUGE_PAGE else None
    if madvise is not None:
        page = mmap.PAGESIZE
        start, end = -(-out.data_ptr() // page) * page, (out.data_ptr() + nbytes) // page * page
        madvise(start, end - start, mmap.MADV_HUGEPAGE)
    return out


@functools.cache
def _madvise() -> Any:
    """libc's ``madvise``, where the platform has it and transparent huge pages (Linux)."""
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes, madvise.restype = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int), ctypes.c_int
    return madvise


def dequantize(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = q * scale + offset`` in place: uint8 ``q`` into float32 ``out`` (a view of the
    tensor being rebuilt), ``scale`` and ``offset`` broadcast over it. Three passes in place
    take a quarter of the time of one ``addcmul`` from uint8, which goes through torch's
    slower mixed-dtype loop."""
    return out.copy_(q).mul_(scale).add_(offset)


def _jpeg_jobs(name: str, entry: dict[str, Any], stored: Mapping[str, torch.Tensor], device) -> tuple[torch.Tensor, list]:
    """A JPEG entry's float32 ``(rows, cols)`` output and one job per atlas: ``fill(atlas)``
    decodes the atlas on the CPU, ``fill(atlas, image)`` takes it decoded; either way its
    pixels are dequantized into their place in the output. Jobs may run in any order, in
    parallel: each writes only its own atlas's cells."""
    _, shape = entry_header(name, entry)
    rows, cols = view2d(shape)
    scale, offset = _affine(entry, stored, device)
    layout, tile = entry["layout"], tuple(entry["tile"]) if entry["tile"] else None
    out = empty_float32((rows, cols), device)

    def fill(a: dict[str, Any], image: torch.Tensor | None = None) -> None:
        if image is None:
            try:
                image = jpeg.decode(stored[a["key"]])
            except JpegDecodeError as exc:
                raise JpegDecodeError(f"atlas {a['key']!r}: {exc}", tensor=name) from exc
        if tuple(image.shape) != (a["height"], a["width"]):
            raise JpegDecodeError(f"atlas {a['key']!r} decoded to {tuple(image.shape)}, expected {a['height']}x{a['width']}", tensor=name)
        r, c, q = atlas_mod.unpack(image, layout, tile, a)
        dequantize(q, scale[r], offset[r], out[r, c])

    return out, [(fill, a) for a in entry["atlases"]]


def _decode_checked(stored: Mapping[str, torch.Tensor], manifest: dict[str, Any], device, workers: int | None, names: Collection[str] | None = None) -> dict[str, torch.Tensor]:
    check_manifest(manifest, stored)
    tensors = manifest["tensors"]
    if names is not None:
        missing = sorted(set(names) - tensors.keys())
        if missing:
            raise ManifestError(f"the package has no tensor {show(missing[0])}")
        tensors = {name: entry for name, entry in tensors.items() if name in names}
    workers = workers or min(8, os.cpu_count() or 1)
    if torch.device(device).type == "cuda" or workers == 1:
        return {name: _decode_entry(name, entry, stored, device) for name, entry in tensors.items()}
    # On the CPU every atlas of every tensor is one job for the pool, largest first: a model's
    # tensors are mostly one atlas each, so decoding them one tensor at a time left cores idle.
    # Meanwhile this thread rebuilds the other tensors.
    out, pending, jobs = {}, {}, []
    for name, entry in tensors.items():
        if entry["coding"] == "jpeg":
            pending[name], tensor_jobs = _jpeg_jobs(name, entry, stored, device)
            jobs += tensor_jobs
    jobs.sort(key=lambda job: -job[1]["height"] * job[1]["width"])
    rest = {name: entry for name, entry in tensors.items() if name not in pending}
    if len(jobs) <= 1:  # handing one job to another thread costs more than it saves
        for fill, a in jobs:
            fill(a)
        out.update((name, _decode_entry(name, entry, stored, device)) for name, entry in rest.items())
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(fill, a) for fill, a in jobs]
            try:
                out.update((name, _decode_entry(name, entry, stored, device)) for name, entry in rest.items())
                for f in futures:
                    f.result()
            except BaseException:
                pool.shutdown(cancel_futures=True)  # returns once no job is left running
                raise
    for name, dense in pending.items():
        out[name] = _finish(name, tensors[name], stored, dense)
    return {name: out[name] for name in tensors}


def _decode_verified(stored: Mapping[str, torch.Tensor], manifest: dict[str, Any], verify: Verify, device, workers: int | None, names: Collection[str] | None = None) -> dict[str, torch.Tensor]:
    """``_decode_checked`` while the digest is checked beside it: the tensors once it matches,
    and a digest mismatch rather than any error the corruption caused."""
    with digest_wins(verify):
        out = _decode_checked(stored, manifest, device, workers, names)
    verify()
    return out


def decode(data: bytes | bytearray | memoryview, device: str | torch.device = "cpu", workers: int | None = None, names: Collection[str] | None = None) -> dict[str, torch.Tensor]:
    """Decode ``.jpw`` bytes into a dense state_dict on ``device`` (only the tensors in ``names``
    if given: a name the package lacks raises ``ManifestError``).

    All or nothing: every rule of the format is checked before any tensor is rebuilt, and every
    tensor is rebuilt, and the digest checked, before anything is returned; any problem raises a
    ``CodecError`` subclass naming the tensor. The digest is computed beside the parsing and
    decoding; when it does not match, that ``ChecksumError`` is what is raised, whatever else
    the corruption broke. The manifest's ``architecture`` plays no part.
    """
    return _decode_verified(*read_pending(data), device, workers, names)


# ---------------------------------------------------------------- files


def save_file(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, config: EncodeConfig | None = None, architecture: dict[str, Any] | None = None, handler: dict[str, Any] | None = None, *, hessians: Mapping[str, torch.Tensor] | None = None) -> int:
    """Encode to ``path`` atomically (temporary file, then rename); return the size in bytes."""
    data = encode(state_dict, config, architecture, handler, hessians=hessians)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return len(data)


def load_file(path: str | os.PathLike, device: str | torch.device = "cpu", max_bytes: int | None = None) -> dict[str, torch.Tensor]:
    """Decode a ``.jpw`` file. Its header is checked before the rest is read; anything but a
    regular file, or (with ``max_bytes``) a larger one, is refused with a ``FormatError``."""
    return load_package(path, device, max_bytes)[0]


def load_package(path: str | os.PathLike, device: str | torch.device = "cpu", max_bytes: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``load_file`` that also returns the (checked) manifest: ``(state_dict, manifest)``."""
    stored, manifest, verify = read_file_pending(path, max_bytes)
    return _decode_verified(stored, manifest, verify, device, None), manifest


def load_manifest(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """The manifest alone (digest and structure checked), without decoding any tensor."""
    _, manifest = read(data)
    check_manifest(manifest)
    return manifest


def summarize(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Per-tensor and total figures of a package, from its manifest and stored sizes (nothing
    is decoded): what ``jpegweights inspect`` prints."""
    stored, manifest = read(data)
    check_manifest(manifest, stored)
    rows, total_original, total_f32 = [], 0, 0
    for name, entry in manifest["tensors"].items():
        nbytes = sum(stored[key].numel() * stored[key].element_size() for key in stored_keys(entry))
        numel = math.prod(entry["shape"])
        original = numel * DTYPES[entry["dtype"]].itemsize
        total_original += original
        total_f32 += numel * 4
        rows.append({
            "name": name, "shape": entry["shape"], "dtype": entry["dtype"], "coding": entry["coding"],
            "quality": entry.get("quality"), "qtable": entry.get("qtable"), "layout": entry.get("layout"),
            "bytes": nbytes, "ratio": original / nbytes if nbytes else None,
        })  # fmt: skip
    return {
        "version": manifest["version"],
        "file_bytes": len(data),
        "original_bytes": total_original,
        "float32_bytes": total_f32,
        "ratio_vs_original": total_original / len(data),
        "ratio_vs_float32": total_f32 / len(data),
        "architecture": manifest.get("architecture") is not None,
        "tensors": rows,
    }
