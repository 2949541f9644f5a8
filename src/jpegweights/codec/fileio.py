"""``.jpw`` files: written atomically (``jpegweights.files``), read with the header checked first.

>>> save_file(model.state_dict(), "model.jpw", EncodeConfig(quality=90))
>>> state, manifest = load_package("model.jpw")
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from jpegweights.files import write_atomic

from .config import EncodeConfig
from .container import read_file_pending
from .decoding import decode_verified
from .encoding import encode


def save_file(
    state_dict: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    config: EncodeConfig | None = None,
    architecture: dict[str, Any] | None = None,
    handler: dict[str, Any] | None = None,
    *,
    hessians: Mapping[str, torch.Tensor] | None = None,
) -> int:
    """Encode to ``path`` atomically (a temporary file, then a rename); return the size in bytes."""
    return write_atomic(path, encode(state_dict, config, architecture, handler, hessians=hessians))


def load_file(
    path: str | os.PathLike, device: str | torch.device = "cpu", max_bytes: int | None = None
) -> dict[str, torch.Tensor]:
    """Decode a ``.jpw`` file. Its header is checked before the rest is read; anything but a
    regular file, or (with ``max_bytes``) a larger one, is refused with a ``FormatError``."""
    return load_package(path, device, max_bytes)[0]


def load_package(
    path: str | os.PathLike, device: str | torch.device = "cpu", max_bytes: int | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``load_file`` that also returns the (checked) manifest: ``(state_dict, manifest)``."""
    stored, manifest, verify = read_file_pending(path, max_bytes)
    return decode_verified(stored, manifest, verify, device, None), manifest
