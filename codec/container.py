"""The ``.jpw`` container: a plain safetensors file, parsed here with the checks we need.

Writing goes through ``safetensors.torch.save`` (deterministic: tensors sorted, header
padded). Reading is our own strict parser so that every malformed input becomes a specific
``FormatError`` and stored tensors are zero-copy views of the input bytes.
"""

from __future__ import annotations

import json
import math
import struct
import warnings
from typing import Any

import torch

from .errors import FormatError, HeaderTooLargeError, ManifestError, TruncatedError

MAX_HEADER_BYTES = 16 * 1024 * 1024
METADATA_KEY = "jpegweights"

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def write(tensors: dict[str, torch.Tensor], manifest: dict[str, Any]) -> bytes:
    from safetensors.torch import save

    metadata = {METADATA_KEY: json.dumps(manifest, separators=(",", ":"), sort_keys=False)}
    return save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)


def read(data: bytes | bytearray | memoryview) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Parse a container: (stored tensors as views of ``data``, the manifest)."""
    view = memoryview(data).cast("B")
    if len(view) < 8:
        raise TruncatedError(f"file is {len(view)} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", view[:8])
    if n > MAX_HEADER_BYTES:
        raise HeaderTooLargeError(f"header of {n} bytes exceeds the limit of {MAX_HEADER_BYTES}")
    if 8 + n > len(view):
        raise TruncatedError(f"header claims {n} bytes but only {len(view) - 8} follow")
    try:
        header = json.loads(bytes(view[8 : 8 + n]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise FormatError("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    tensors = _tensors(header, view[8 + n :])
    if not isinstance(metadata, dict) or METADATA_KEY not in metadata:
        raise ManifestError(f"no '{METADATA_KEY}' manifest in __metadata__: not a jpegweights file")
    try:
        manifest = json.loads(metadata[METADATA_KEY])
    except (TypeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ManifestError("manifest is not a JSON object")
    return tensors, manifest


def _tensors(header: dict[str, Any], body: memoryview) -> dict[str, torch.Tensor]:
    """Check safetensors' rules (known dtypes, sizes that match, no holes, no overlap)."""
    spans = []
    for name, info in header.items():
        try:
            dtype = DTYPES[info["dtype"]]
            shape = [int(d) for d in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"tensor {name!r}: bad header entry {info!r}") from exc
        if any(d < 0 for d in shape) or not 0 <= begin <= end:
            raise FormatError(f"tensor {name!r}: bad shape or offsets in {info!r}")
        if math.prod(shape) * dtype.itemsize != end - begin:
            raise FormatError(f"tensor {name!r}: {end - begin} bytes do not hold {info['dtype']}{shape}")
        spans.append((begin, end, name, dtype, shape))
    spans.sort()
    position = 0
    tensors = {}
    for begin, end, name, dtype, shape in spans:
        if begin != position:
            raise FormatError(f"tensor {name!r}: data at byte {begin}, expected {position} (hole or overlap)")
        if end > len(body):
            raise TruncatedError(f"tensor {name!r} ends at byte {end} but the data has {len(body)}")
        position = end
        with warnings.catch_warnings():  # read-only input buffer: we never write to these views
            warnings.simplefilter("ignore", UserWarning)
            flat = torch.frombuffer(body, dtype=dtype, count=math.prod(shape), offset=begin) if end > begin else torch.empty(0, dtype=dtype)
        tensors[name] = flat.view(shape)
    if position != len(body):
        raise FormatError(f"{len(body) - position} trailing bytes after the last tensor")
    return tensors
