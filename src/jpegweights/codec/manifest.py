"""Checking a manifest against the stored tensors before anything is decoded.

Every rule of the README's format section that a reader MUST enforce lives here, so that
decoding itself can trust what it reads:

- each entry has exactly the fields of its coding, of the right types;
- every stored tensor is referenced exactly once, by exactly one entry;
- a tensor's atlases cover each of its values exactly once;
- scales, offsets and raw float tensors are finite, and no decoded value can leave the
  range of its dtype;
- no atlas claims more pixels than its bytes can honestly code.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from . import jpeg
from .container import DTYPES, FORMAT, READ_VERSIONS, check_int, check_shape
from .errors import ExpansionError, ImageTooLargeError, JpegDecodeError, ManifestError, VersionError, show
from .tiles import view2d

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
SCALE_DTYPES = (torch.float16, torch.float32)
# A baseline JPEG needs at least 2 bits per 8x8 block (a DC code and an end-of-block code),
# so it cannot honestly describe more than 256 pixels per byte. We allow 4x that, plus room
# for the smallest images, and refuse anything claiming more as a decompression bomb.
MAX_PIXELS_PER_BYTE = 1024
PIXEL_ALLOWANCE = 1 << 20
# What a whole package may cost once decoded, in bytes of its tensors per stored byte. Trained
# models measure up to 238x (the fine-tuned MNIST MLP), a random matrix at quality 1 546x; a
# constant one codes at 944x, which no model needs at scale. Past the allowance, more is refused
# before anything is decoded.
MAX_EXPANSION = 768
EXPANSION_ALLOWANCE = 64 << 20

ENTRY_FIELDS = {
    "raw": {"coding", "dtype", "shape", "key"},
    "int8": {"coding", "dtype", "shape", "key", "scale", "offset"},
    "jpeg": {"coding", "dtype", "shape", "quality", "qtable", "layout", "tile", "scale", "offset", "atlases"},
}
# Optional pairs: a JPEG entry may keep values far from its rows' means apart (version 3).
OPTIONAL_FIELDS = {"raw": set(), "int8": set(), "jpeg": {"outliers", "outlier_values"}}
ATLAS_FIELDS = {
    "rows": {"key", "first", "count", "grid", "height", "width"},
    "matrix": {"key", "row", "col", "height", "width"},
}


def check_manifest(manifest: dict[str, Any], stored: Mapping[str, torch.Tensor] | None = None) -> None:
    """Raise a ``FormatError`` subclass for anything a reader must refuse.

    Without ``stored`` only the manifest's own structure is checked (what ``load_manifest``
    needs); with it, every reference, coverage and value rule too.
    """
    if manifest.get("format") != FORMAT:
        raise ManifestError(f"manifest format is {show(manifest.get('format'))}, expected {FORMAT!r}")
    if manifest.get("version") not in READ_VERSIONS:
        raise VersionError(
            f"format version {show(manifest.get('version'))} is not supported (this reader knows {READ_VERSIONS})"
        )
    tensors = manifest.get("tensors")
    if not isinstance(tensors, dict):
        raise ManifestError("manifest has no 'tensors' object")
    for name, entry in tensors.items():
        check_fields(name, entry)
    if stored is None:
        return
    _check_references(tensors, stored)
    for name, entry in tensors.items():
        check_values(name, entry, stored)
        for a in entry.get("atlases", ()):
            check_atlas(name, a, stored)
    _check_totals(tensors, stored)


def check_layout(manifest: dict[str, Any], stored: Mapping[str, torch.Tensor]) -> None:
    """Every rule that needs only the stored tensors' names, dtypes and shapes, not their bytes:
    what a reader can check before the data has arrived. The rest is ``check_values`` and
    ``check_atlas``, one entry and one atlas at a time."""
    check_manifest(manifest)
    tensors = manifest["tensors"]
    _check_references(tensors, stored)
    for name, entry in tensors.items():
        for key in stored_keys(entry):
            if key not in stored:
                raise ManifestError(f"refers to missing stored tensor {show(key, 200)}", tensor=name)
    _check_totals(tensors, stored)


def _check_references(tensors: dict[str, Any], stored: Mapping[str, torch.Tensor]) -> None:
    references = Counter(key for entry in tensors.values() for key in stored_keys(entry))
    reused = sorted(k for k, n in references.items() if n > 1)
    if reused:
        raise ManifestError(f"stored tensor(s) {show(reused[:5], 200)} referenced more than once")
    unreferenced = sorted(set(stored) - set(references))
    if unreferenced:
        raise ManifestError(f"stored tensor(s) {show(unreferenced[:5], 200)} are not referenced by the manifest")


def _check_totals(tensors: dict[str, Any], stored: Mapping[str, torch.Tensor]) -> None:
    """No more pixels than all the JPEG bytes can honestly code; no more decoded bytes than
    ``MAX_EXPANSION`` per stored byte."""
    atlases = [a for entry in tensors.values() if entry["coding"] == "jpeg" for a in entry["atlases"]]
    pixels = sum(a["height"] * a["width"] for a in atlases)
    stream_bytes = sum(stored[a["key"]].numel() for a in atlases)
    if pixels > MAX_PIXELS_PER_BYTE * stream_bytes + PIXEL_ALLOWANCE:
        raise ImageTooLargeError(
            f"atlases claim {pixels} pixels from {stream_bytes} bytes of JPEG (decompression bomb?)"
        )
    _check_expansion(tensors, stored)


def _check_expansion(tensors: dict[str, Any], stored: Mapping[str, torch.Tensor]) -> None:
    dense = sum(math.prod(e["shape"]) * DTYPES[e["dtype"]].itemsize for e in tensors.values())
    size = sum(t.nbytes for t in stored.values())
    if dense > MAX_EXPANSION * size + EXPANSION_ALLOWANCE:
        raise ExpansionError(
            f"the package decodes to {dense:,} bytes from {size:,}: more than {MAX_EXPANSION} per byte "
            f"beyond the first {EXPANSION_ALLOWANCE >> 20} MiB"
        )


def stored_keys(entry: dict[str, Any]) -> list[str]:
    """The stored tensors that one (checked) manifest entry refers to."""
    keys = [entry[k] for k in ("key", "scale", "offset", "outliers", "outlier_values") if k in entry]
    return keys + [a["key"] for a in entry.get("atlases", [])]


def entry_header(name: str, entry: dict[str, Any]) -> tuple[torch.dtype, tuple[int, ...]]:
    return DTYPES[entry["dtype"]], tuple(entry["shape"])


# ---------------------------------------------------------------- structure


def _fields(what: str | None, obj: Any, expected: set[str], optional: set[str] = frozenset()) -> dict[str, Any]:
    """``obj``: a dict of exactly the ``expected`` fields, and all or none of the ``optional``
    ones. Messages start with ``what``, if given."""
    where = f"{what}: " if what else ""
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}not a JSON object")
    present = set(obj) & optional
    if present and present != optional:
        raise ManifestError(
            f"{where}fields {show(sorted(optional), 200)} come together, got only {show(sorted(present), 200)}"
        )
    expected = expected | present
    if set(obj) != expected:
        missing, extra = sorted(expected - set(obj)), sorted(set(obj) - expected)
        raise ManifestError(f"{where}missing fields {show(missing, 200)}, unknown fields {show(extra, 200)}")
    return obj


def _key(value: Any) -> str:
    if not isinstance(value, str):
        raise ManifestError(f"stored-tensor reference {show(value)} is not a string")
    return value


def check_fields(name: str, entry: Any) -> None:
    """One entry's fields and types (not yet against the stored tensors)."""
    try:
        _check_fields(entry)
    except ManifestError as exc:  # the tensor's name is shown only when something is wrong
        raise type(exc)(str(exc), tensor=name) from None


def _check_fields(entry: Any) -> None:
    coding = entry.get("coding") if isinstance(entry, dict) else None
    if not isinstance(coding, str) or coding not in ENTRY_FIELDS:
        raise ManifestError(f"unknown coding {show(coding)}")
    _fields(None, entry, ENTRY_FIELDS[coding], OPTIONAL_FIELDS[coding])
    dtype = DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None:
        raise ManifestError(f"unknown dtype {show(entry['dtype'])}")
    check_shape(entry["shape"], "shape", ManifestError)
    for field in ("key", "scale", "offset", "outliers", "outlier_values"):
        if field in entry:
            _key(entry[field])
    if coding != "raw" and dtype not in FLOAT_DTYPES:
        raise ManifestError(f"coding {coding!r} needs a float dtype, manifest says {entry['dtype']}")
    if coding == "jpeg":
        _check_jpeg_fields(entry)


def _check_jpeg_fields(entry: dict[str, Any]) -> None:
    check_int(entry["quality"], "quality", 1, 100, ManifestError)
    if entry["qtable"] not in jpeg.QTABLES:
        raise ManifestError(f"unknown qtable {show(entry['qtable'])}")
    layout, tile = entry["layout"], entry["tile"]
    rows, cols = view2d(entry["shape"])
    if layout == "rows":
        if not isinstance(tile, list) or len(tile) != 2:
            raise ManifestError(f"tile must be [h, w], got {show(tile)}")
        h, w = (check_int(t, "tile side", 1, jpeg.MAX_SIDE, ManifestError) for t in tile)
        if h * w != cols:
            raise ManifestError(f"tile {show(tile)} does not match rows of {cols} values")
    elif layout == "matrix":
        if tile is not None:
            raise ManifestError("the matrix layout takes no tile")
    else:
        raise ManifestError(f"unknown layout {show(layout)}")
    atlases = entry["atlases"]
    if not isinstance(atlases, list) or not atlases:
        raise ManifestError("no atlases")
    fields = ATLAS_FIELDS[layout]
    for i, a in enumerate(atlases):
        _fields(f"atlas {i}", a, fields)
        _key(a["key"])
        for field in fields - {"key", "grid"}:
            check_int(a[field], f"atlas {i} {field}", 0, 1 << 62, ManifestError)
        if not (1 <= a["height"] <= jpeg.MAX_SIDE and 1 <= a["width"] <= jpeg.MAX_SIDE):
            raise ManifestError(f"atlas {i} is {a['height']}x{a['width']}; sides must be 1..{jpeg.MAX_SIDE}")
    if layout == "rows":
        _check_rows_cover(atlases, rows, tuple(tile))
    else:
        _check_matrix_cover(atlases, rows, cols)


def _check_rows_cover(atlases: list[dict[str, Any]], rows: int, tile: tuple[int, int]) -> None:
    """Each atlas is a tight grid of ``count`` tiles; together they hold rows 0..rows-1 once."""
    ph, pw = tile
    for i, a in enumerate(atlases):
        grid = a["grid"]
        if not isinstance(grid, list) or len(grid) != 2:
            raise ManifestError(f"atlas {i}: grid must be [gh, gw]")
        gh, gw = (check_int(g, f"atlas {i} grid", 1, jpeg.MAX_SIDE, ManifestError) for g in grid)
        if not (a["count"] >= 1 and gh == -(-a["count"] // gw) and (a["height"], a["width"]) == (gh * ph, gw * pw)):
            raise ManifestError(
                f"atlas {i}: grid {grid} of {ph}x{pw} tiles "
                f"does not fit {a['count']} tiles in {a['height']}x{a['width']}"
            )
    position = 0
    for a in sorted(atlases, key=lambda a: a["first"]):
        if a["first"] != position:
            raise ManifestError(f"atlases leave rows from {position} uncovered or cover them twice")
        position += a["count"]
    if position != rows:
        raise ManifestError(f"atlases cover {position} rows, tensor has {rows}")


def _check_matrix_cover(atlases: list[dict[str, Any]], rows: int, cols: int) -> None:
    """Column chunks, each cut into row bands: consecutive from (0, 0) to (rows, cols)."""
    chunks: dict[int, list[dict[str, Any]]] = {}
    for a in atlases:
        chunks.setdefault(a["col"], []).append(a)
    col = 0
    for start in sorted(chunks):
        bands = sorted(chunks[start], key=lambda a: a["row"])
        width = bands[0]["width"]
        row = 0
        for a in bands:
            if start != col or a["row"] != row or a["width"] != width:
                raise ManifestError(f"atlas at ({a['row']}, {a['col']}) leaves values uncovered or covers them twice")
            row += a["height"]
        if row != rows:
            raise ManifestError(f"atlases of column {start} cover {row} rows, tensor has {rows}")
        col += width
    if col != cols:
        raise ManifestError(f"atlases cover {col} columns, tensor has {cols}")


# ---------------------------------------------------------------- against the stored tensors


def get(
    stored: Mapping[str, torch.Tensor], key: str, name: str, dtypes: tuple[torch.dtype, ...], shape: tuple | None = None
) -> torch.Tensor:
    if key not in stored:
        raise ManifestError(f"refers to missing stored tensor {show(key, 200)}", tensor=name)
    t = stored[key]
    if t.dtype not in dtypes:
        raise ManifestError(
            f"stored tensor {show(key, 200)} has dtype {t.dtype}, expected one of {dtypes}", tensor=name
        )
    if shape is not None and tuple(t.shape) != shape:
        raise ManifestError(f"stored tensor {show(key, 200)} has shape {tuple(t.shape)}, expected {shape}", tensor=name)
    return t


def affine_fits(scale: torch.Tensor, offset: torch.Tensor, dtype: torch.dtype) -> bool:
    """Every ``offset + scale * q`` (q in 0..255), and each step of computing it in float32, is
    finite and within ``dtype``'s range."""
    limit = min(torch.finfo(torch.float32).max, torch.finfo(dtype).max)
    bound = offset.double().abs() + 255 * scale.double().abs()
    return bool(torch.isfinite(bound).all()) and (len(bound) == 0 or float(bound.max()) <= limit)


def affine(
    entry: dict[str, Any], stored: Mapping[str, torch.Tensor], device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """A checked entry's ``(scale, offset)``: float32, one per row on ``device`` (a range
    stored once, shape (1,), is shared by every row)."""
    rows, _ = view2d(entry["shape"])
    return tuple(stored[entry[k]].to(device, torch.float32).expand(rows) for k in ("scale", "offset"))


def finite(t: torch.Tensor) -> bool:
    """Whether every value of a stored (CPU) float tensor is finite. numpy's call costs less
    than torch's on the small tensors (biases, norms) that a package holds hundreds of."""
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16
        return bool(torch.isfinite(t).all())
    return bool(np.isfinite(t.numpy()).all())


def check_values(name: str, entry: dict[str, Any], stored: Mapping[str, torch.Tensor]) -> None:
    """An entry's stored tensors of the right dtype and shape, and finite values (its atlases
    are ``check_atlas``'s)."""
    dtype, shape = entry_header(name, entry)
    coding = entry["coding"]
    if coding == "raw":
        narrower = (torch.float16,) if dtype in (torch.float32, torch.float64) else ()
        t = get(stored, entry["key"], name, (dtype, *narrower), shape)
        if t.is_floating_point() and not finite(t):
            raise ManifestError("raw tensor holds NaN or Inf", tensor=name)
        return
    rows, cols = view2d(shape)
    scale, offset = (get(stored, entry[k], name, SCALE_DTYPES) for k in ("scale", "offset"))
    if not tuple(scale.shape) == tuple(offset.shape) in ((rows,), (1,)):
        raise ManifestError(
            (
                f"scale and offset must both have shape ({rows},), or (1,) for one range shared by every row; "
                f"got {tuple(scale.shape)} and {tuple(offset.shape)}"
            ),
            tensor=name,
        )
    if not affine_fits(scale, offset, dtype):
        raise ManifestError(
            f"scale or offset is NaN, Inf, or takes values out of {entry['dtype']}'s range", tensor=name
        )
    if coding == "int8":
        get(stored, entry["key"], name, (torch.uint8,), (rows, cols))
        return
    if "outliers" in entry:
        _check_outliers(name, entry, stored, dtype, rows * cols)


def check_atlas(name: str, a: dict[str, Any], stored: Mapping[str, torch.Tensor]) -> None:
    """A JPEG entry's atlas: a 1-D uint8 stream whose frame header is honest and says the atlas's size."""
    stream = get(stored, a["key"], name, (torch.uint8,))
    if stream.dim() != 1:
        raise ManifestError(f"stored JPEG {show(a['key'], 200)} is not a 1-D tensor", tensor=name)
    if a["height"] * a["width"] > MAX_PIXELS_PER_BYTE * stream.numel() + PIXEL_ALLOWANCE:
        raise ImageTooLargeError(
            (
                f"atlas {show(a['key'], 200)} claims {a['height']}x{a['width']} pixels "
                f"from {stream.numel()} bytes (decompression bomb?)"
            ),
            tensor=name,
        )
    try:
        jpeg.check_dimensions(stream.numpy(), a["height"], a["width"])
    except JpegDecodeError as exc:
        raise type(exc)(f"atlas {show(a['key'], 200)}: {exc}", tensor=name) from exc


def _check_outliers(
    name: str, entry: dict[str, Any], stored: Mapping[str, torch.Tensor], dtype: torch.dtype, numel: int
) -> None:
    """Strictly increasing positions inside the matrix; finite values within the dtype's range."""
    index = get(stored, entry["outliers"], name, (torch.int32,))
    if index.dim() != 1:
        raise ManifestError("outlier positions are not a 1-D tensor", tensor=name)
    values = get(stored, entry["outlier_values"], name, (torch.float16, torch.float32), tuple(index.shape))
    if len(index) and (int(index[0]) < 0 or int(index[-1]) >= numel or not bool((index[1:] > index[:-1]).all())):
        raise ManifestError(f"outlier positions must increase strictly within 0..{numel - 1}", tensor=name)
    if not finite(values) or (len(values) and float(values.double().abs().max()) > torch.finfo(dtype).max):
        raise ManifestError(f"outlier values are NaN, Inf, or out of {entry['dtype']}'s range", tensor=name)
