"""Helpers to build deliberately broken packages."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable

import torch

from jpegweights.codec.container import read, write


def rewrite(
    data: bytes, edit_manifest: Callable[[dict], None] | None = None, edit_stored: Callable[[dict], None] | None = None
) -> bytes:
    """Re-serialize a package after editing its manifest and/or stored tensors in place."""
    stored, manifest = read(data)
    stored = {k: v.clone() for k, v in stored.items()}
    if edit_manifest:
        edit_manifest(manifest)
    if edit_stored:
        edit_stored(stored)
    return write(stored, manifest)


def header(data: bytes) -> dict:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n])


def stream_bytes(t: torch.Tensor) -> bytes:
    return t.numpy().tobytes()
