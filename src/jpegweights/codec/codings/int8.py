"""The ``int8`` coding: 8-bit codes with an affine range per row (``tiles.quantize_rows``).

>>> coded = encode("fc.weight", w, EncodeConfig(coding="int8").for_tensor("fc.weight"))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..buffers import dequantize
from ..config import TensorSettings
from ..manifest import entry_header
from ..tiles import quantize_rows, view2d
from .coded import Coded, base_entry, row_ranges


def encode(name: str, t: torch.Tensor, settings: TensorSettings) -> Coded:
    """uint8 codes ``(rows, cols)`` and per-row ``scale``, ``offset`` (rows clipped to mean ±
    ``clip_sigma`` std, if set)."""
    aff = quantize_rows(t.reshape(view2d(t.shape)), settings.clip_sigma)
    entry = {**base_entry(t, "int8"), "key": f"{name}/q", "scale": f"{name}/scale", "offset": f"{name}/offset"}
    return Coded(name, entry, {entry["key"]: aff.q, entry["scale"]: aff.scale, entry["offset"]: aff.offset})


def decode(
    name: str, entry: dict[str, Any], stored: Mapping[str, torch.Tensor], device: str | torch.device
) -> torch.Tensor:
    """``q * scale + offset`` row by row, in float32, then the entry's dtype and shape."""
    dtype, shape = entry_header(name, entry)
    scale, offset = row_ranges(entry, stored, device)
    out = torch.empty(view2d(shape), dtype=torch.float32, device=device)
    return dequantize(stored[entry["key"]].to(device), scale, offset, out).to(dtype).view(shape)
