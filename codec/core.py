"""``encode``/``decode``: a state_dict to a ``.jpw`` package and back.

>>> data = encode(model.state_dict(), EncodeConfig(quality=20))
>>> state = decode(data, device="cpu")          # dense tensors, original dtypes and shapes
>>> model.load_state_dict(state)
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import atlas as atlas_mod
from . import jpeg
from .arch import validate_spec
from .config import EncodeConfig
from .container import DTYPE_NAMES, DTYPES, read, write
from .errors import CodecError, ConfigError, ImageTooLargeError, InvalidTensorError, JpegDecodeError, ManifestError, VersionError
from .tiles import RowAffine, parse_layout, quantize_rows, view2d

FORMAT = "jpegweights"
FORMAT_VERSION = 1
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# A baseline JPEG needs at least 2 bits per 8x8 block (a DC code and an end-of-block code),
# so it cannot honestly describe more than 256 pixels per byte. We allow 4x that, plus room
# for the smallest images, and refuse anything claiming more as a decompression bomb.
MAX_PIXELS_PER_BYTE = 1024
PIXEL_ALLOWANCE = 1 << 20


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


def encode_raw(name: str, t: torch.Tensor) -> Coded:
    return Coded(name, {**_base_entry(t, "raw"), "key": name}, {name: t.contiguous()})


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
) -> Coded:
    """Code one tensor as 8-bit grayscale JPEG atlases with affine ranges stored per row."""
    rows, cols = view2d(t.shape)
    kind, tile = parse_layout(layout, tuple(t.shape))
    aff: RowAffine = quantize_rows(t.reshape(rows, cols), clip_sigma, ranges)
    q = aff.q.numpy()  # (rows, cols) uint8
    if kind == "rows":
        plans = atlas_mod.plan_rows(rows, tile, max_atlas_pixels)
        images = [atlas_mod.pack_rows(q, tile, p) for p in plans]
    else:
        plans = atlas_mod.plan_matrix(rows, cols, max_atlas_pixels)
        images = [atlas_mod.pack_matrix(q, p) for p in plans]
    table = jpeg.qtable(qtable, quality)
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
    for i, (plan, image) in enumerate(zip(plans, images)):
        key = f"{name}/jpeg/{i}"
        stored[key] = torch.frombuffer(bytearray(jpeg.encode(image, table)), dtype=torch.uint8)
        entry["atlases"].append({"key": key, **plan})
    return Coded(name, entry, stored)


def snr_db(x: torch.Tensor, y: torch.Tensor) -> float:
    """Signal-to-noise ratio of reconstruction ``y`` against ``x``, in dB."""
    x, y = x.double(), y.double()
    noise = float(((x - y) ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float((x**2).sum()) / noise)


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


def choose(name: str, t: torch.Tensor, config: EncodeConfig) -> Coded:
    """Code one tensor as the config says; ``auto`` settings are decided by measurement.

    - layout: among the candidate layouts, the lowest rate-distortion ``cost``;
    - qtable: ``standard`` if it keeps at least ``structure_ratio`` of the flat table's SNR
      (in dB) at the same quality: the tensor has the spatial structure JPEG's photographic
      table assumes. Otherwise ``flat``;
    - coding: int8 if it dominates the chosen JPEG (no more bytes, no lower SNR).
    See docs/codec.md for the measurements behind these rules.
    """
    coding = config.coding_of(name)
    if not t.is_floating_point() or t.dim() < 2 or (coding == "auto" and t.numel() < config.lossless_below):
        coding = "raw"
    if coding == "raw":
        return encode_raw(name, t)
    if coding == "int8" or (coding == "auto" and t.numel() < config.int8_below):
        return encode_int8(name, t, config.clip_sigma)
    quality, n = config.quality_of(name), t.numel()
    options = dict(clip_sigma=config.clip_sigma, ranges=config.ranges, max_atlas_pixels=config.max_atlas_pixels)
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
    return chosen[0]


def encode(
    state_dict: Mapping[str, torch.Tensor],
    config: EncodeConfig | None = None,
    architecture: dict[str, Any] | None = None,
) -> bytes:
    """Encode a state_dict into ``.jpw`` bytes (deterministic: same input, same bytes).

    Raises ``InvalidTensorError`` for NaN/Inf or unsupported dtypes and ``ConfigError`` for bad
    settings, both naming the tensor.
    """
    config = config or EncodeConfig()
    if architecture is not None:
        validate_spec(architecture)
    manifest: dict[str, Any] = {"format": FORMAT, "version": FORMAT_VERSION, "tensors": {}}
    stored: dict[str, torch.Tensor] = {}
    for name, value in state_dict.items():
        t = _check_input(name, value)
        try:
            coded = choose(name, t, config)
        except CodecError as exc:
            if exc.tensor is not None:
                raise
            raise type(exc)(str(exc), tensor=name) from exc
        clash = set(coded.stored) & (set(stored) | set(state_dict) - {name})
        if clash:
            raise ConfigError(f"stored key(s) {sorted(clash)} collide with other tensors' names", tensor=name)
        manifest["tensors"][name] = coded.entry
        stored.update(coded.stored)
    if architecture is not None:
        manifest["architecture"] = architecture
    manifest["config"] = config.to_dict()
    return write(stored, manifest)


# ---------------------------------------------------------------- decoding


def _get(stored: Mapping[str, torch.Tensor], key: Any, name: str, dtypes: tuple[torch.dtype, ...], shape: tuple | None = None) -> torch.Tensor:
    if not isinstance(key, str) or key not in stored:
        raise ManifestError(f"refers to missing stored tensor {key!r}", tensor=name)
    t = stored[key]
    if t.dtype not in dtypes:
        raise ManifestError(f"stored tensor {key!r} has dtype {t.dtype}, expected one of {dtypes}", tensor=name)
    if shape is not None and tuple(t.shape) != shape:
        raise ManifestError(f"stored tensor {key!r} has shape {tuple(t.shape)}, expected {shape}", tensor=name)
    return t


def _entry_header(name: str, entry: Any) -> tuple[torch.dtype, tuple[int, ...]]:
    if not isinstance(entry, dict):
        raise ManifestError("entry is not a JSON object", tensor=name)
    try:
        dtype = DTYPES[entry["dtype"]]
        shape = tuple(int(d) for d in entry["shape"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"bad dtype or shape in {entry!r}", tensor=name) from exc
    if any(d < 0 for d in shape):
        raise ManifestError(f"negative dimension in shape {list(shape)}", tensor=name)
    return dtype, shape


def _check_atlases(name: str, entry: dict[str, Any], rows: int, cols: int, stored: Mapping[str, torch.Tensor]) -> list[tuple[dict, torch.Tensor]]:
    """Validate atlas placements against the tensor's shape and each JPEG's own header."""
    layout, tile = entry.get("layout"), entry.get("tile")
    if layout not in ("rows", "matrix"):
        raise ManifestError(f"unknown layout {layout!r}", tensor=name)
    if layout == "rows" and not (isinstance(tile, list) and len(tile) == 2 and tile[0] * tile[1] == cols):
        raise ManifestError(f"tile {tile!r} does not match rows of {cols} values", tensor=name)
    atlases = entry.get("atlases")
    if not isinstance(atlases, list) or not atlases:
        raise ManifestError("no atlases", tensor=name)
    covered, out = 0, []
    for a in atlases:
        try:
            height, width = int(a["height"]), int(a["width"])
            if layout == "rows":
                ph, pw = tile
                gh, gw = (int(g) for g in a["grid"])
                first, count = int(a["first"]), int(a["count"])
                ok = (height, width) == (gh * ph, gw * pw) and 0 <= first and 0 < count <= gh * gw and first + count <= rows
                covered += count * cols
            else:
                row, col = int(a["row"]), int(a["col"])
                ok = 0 <= row and row + height <= rows and 0 <= col and col + width <= cols and height > 0 and width > 0
                covered += height * width
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"bad atlas entry {a!r}", tensor=name) from exc
        if not ok:
            raise ManifestError(f"atlas {a.get('key')!r} does not fit the tensor's {rows}x{cols} view", tensor=name)
        stream = _get(stored, a.get("key"), name, (torch.uint8,))
        if height * width > MAX_PIXELS_PER_BYTE * stream.numel() + PIXEL_ALLOWANCE:
            raise ImageTooLargeError(f"atlas {a['key']!r} claims {height}x{width} pixels from {stream.numel()} bytes (decompression bomb?)", tensor=name)
        try:
            jpeg.check_dimensions(stream.numpy(), height, width)
        except JpegDecodeError as exc:
            raise type(exc)(f"atlas {a['key']!r}: {exc}", tensor=name) from exc
        out.append((a, stream))
    if covered != rows * cols:
        raise ManifestError(f"atlases cover {covered} values, tensor has {rows * cols}", tensor=name)
    return out


def _affine(name: str, entry: dict[str, Any], stored: Mapping[str, torch.Tensor], rows: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    floats = (torch.float16, torch.float32)
    scale = _get(stored, entry.get("scale"), name, floats, (rows,))
    offset = _get(stored, entry.get("offset"), name, floats, (rows,))
    # (rows, 1) float32, broadcast over each row
    return scale.to(device, torch.float32)[:, None], offset.to(device, torch.float32)[:, None]


def _decode_entry(name: str, entry: Any, stored: Mapping[str, torch.Tensor], device, pool: ThreadPoolExecutor | None = None) -> torch.Tensor:
    """Rebuild one dense tensor on ``device``, in its original dtype and shape."""
    dtype, shape = _entry_header(name, entry)
    coding = entry.get("coding")
    if coding == "raw":
        return _get(stored, entry.get("key"), name, (dtype,), shape).to(device, copy=True)
    if dtype not in FLOAT_DTYPES:
        raise ManifestError(f"coding {coding!r} needs a float dtype, manifest says {entry['dtype']}", tensor=name)
    rows, cols = view2d(shape)
    if coding == "int8":
        q = _get(stored, entry.get("key"), name, (torch.uint8,), (rows, cols)).to(device)
        scale, offset = _affine(name, entry, stored, rows, device)
        return torch.addcmul(offset, q, scale).to(dtype).view(shape)
    if coding != "jpeg":
        raise ManifestError(f"unknown coding {coding!r}", tensor=name)
    atlases = _check_atlases(name, entry, rows, cols, stored)
    scale, offset = _affine(name, entry, stored, rows, device)
    layout, tile = entry["layout"], tuple(entry["tile"]) if entry["tile"] else None
    out = torch.empty((rows, cols), dtype=torch.float32, device=device)

    def fill(a: dict[str, Any], image: torch.Tensor) -> None:
        if tuple(image.shape) != (a["height"], a["width"]):
            raise JpegDecodeError(f"atlas {a['key']!r} decoded to {tuple(image.shape)}, expected {a['height']}x{a['width']}", tensor=name)
        r, c, q = atlas_mod.unpack(image, layout, tile, a)
        torch.addcmul(offset[r], q, scale[r], out=out[r, c])  # fused dequantize into place

    def decode_one(a: dict[str, Any], stream: torch.Tensor) -> None:
        try:
            fill(a, jpeg.decode(stream, "cpu"))
        except JpegDecodeError as exc:
            raise JpegDecodeError(f"atlas {a['key']!r}: {exc}", tensor=name) from exc

    if torch.device(device).type == "cuda":
        images = jpeg.decode_batch([s for _, s in atlases], device)  # nvJPEG, one batch
        for (a, _), image in zip(atlases, images):
            fill(a, image)
    elif pool is not None and len(atlases) > 1:
        for f in [pool.submit(decode_one, a, s) for a, s in atlases]:
            f.result()
    else:
        for a, s in atlases:
            decode_one(a, s)
    return out.to(dtype).view(shape)


def decode(data: bytes | bytearray | memoryview, device: str | torch.device = "cpu", workers: int | None = None) -> dict[str, torch.Tensor]:
    """Decode ``.jpw`` bytes into a dense state_dict on ``device``.

    All or nothing: every tensor is rebuilt before anything is returned; any problem raises a
    ``CodecError`` subclass naming the tensor.
    """
    stored, manifest = read(data)
    check_manifest(manifest)
    tensors = manifest["tensors"]
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return {name: _decode_entry(name, entry, stored, device, pool) for name, entry in tensors.items()}


def stored_keys(entry: dict[str, Any]) -> list[str]:
    """The stored tensors that one manifest entry refers to."""
    keys = [entry[k] for k in ("key", "scale", "offset") if k in entry]
    return keys + [a["key"] for a in entry.get("atlases", [])]


def check_manifest(manifest: dict[str, Any]) -> None:
    if manifest.get("format") != FORMAT:
        raise ManifestError(f"manifest format is {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("version") != FORMAT_VERSION:
        raise VersionError(f"format version {manifest.get('version')!r} is not supported (this reader knows {FORMAT_VERSION})")
    if not isinstance(manifest.get("tensors"), dict):
        raise ManifestError("manifest has no 'tensors' object")
    if "architecture" in manifest:
        validate_spec(manifest["architecture"])


# ---------------------------------------------------------------- files


def save_file(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, config: EncodeConfig | None = None, architecture: dict[str, Any] | None = None) -> int:
    """Encode to ``path`` atomically (temporary file, then rename); return the size in bytes."""
    data = encode(state_dict, config, architecture)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return len(data)


def load_file(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    return decode(Path(path).read_bytes(), device)


def load_manifest(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """The manifest alone (checked), without decoding any tensor."""
    _, manifest = read(data)
    check_manifest(manifest)
    return manifest
