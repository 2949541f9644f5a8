"""The ``raw`` coding: a tensor stored as it is (float32 and float64 optionally in float16).

>>> coded = encode("fc.bias", b, EncodeConfig(raw_dtype="float16").for_tensor("fc.bias"))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..config import TensorSettings
from ..manifest import entry_header
from .coded import Coded, base_entry


def encode(name: str, t: torch.Tensor, settings: TensorSettings) -> Coded:
    """Stored as it is; with ``raw_dtype="float16"``, float32 and float64 tensors that float16
    holds (every value finite after rounding) are stored in float16 and widened again on decode."""
    stored = t.contiguous()
    if settings.raw_dtype == "float16" and t.dtype in (torch.float32, torch.float64):
        half = t.to(torch.float16)
        if bool(torch.isfinite(half).all()):
            stored = half
    return Coded(name, {**base_entry(t, "raw"), "key": name}, {name: stored})


def decode(
    name: str, entry: dict[str, Any], stored: Mapping[str, torch.Tensor], device: str | torch.device
) -> torch.Tensor:
    """The stored tensor on ``device``, in the entry's dtype (a copy: never a view of the input)."""
    dtype, _ = entry_header(name, entry)
    return stored[entry["key"]].to(device, dtype, copy=True)
