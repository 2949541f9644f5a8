"""A package's manifest and figures without decoding a tensor: what ``jpegweights inspect`` prints.

>>> summarize(open("model.jpw", "rb").read())["ratio_vs_float32"]
"""

from __future__ import annotations

import math
from typing import Any

from .container import DTYPES, read
from .manifest import check_manifest, stored_keys


def load_manifest(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """The manifest alone (digest and structure checked), without decoding any tensor."""
    _, manifest = read(data)
    check_manifest(manifest)
    return manifest


def summarize(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Per-tensor and total figures of a package, from its manifest and stored sizes (nothing
    is decoded)."""
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
