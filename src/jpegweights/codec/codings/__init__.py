"""One module per coding, each with the same two verbs, behind one registry.

- ``encode(name, tensor, settings) -> Coded``: one checked CPU tensor, its ``TensorSettings``;
- ``decode(name, entry, stored, device) -> Tensor``: one checked manifest entry rebuilt.

>>> coded = encode("fc.weight", w, EncodeConfig(coding="int8").for_tensor("fc.weight"))
>>> decode("fc.weight", coded.entry, coded.stored, "cpu").shape == w.shape
True

A new coding is a module here and a line in ``REGISTRY`` (plus the reader's rules for its
entry in ``codec.manifest``, kept together there on purpose, and its name in ``config.CODINGS``).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

import torch

from ..config import TensorSettings
from . import int8, jpeg, raw
from .coded import Coded

REGISTRY: dict[str, ModuleType] = {"raw": raw, "int8": int8, "jpeg": jpeg}

__all__ = ["REGISTRY", "Coded", "decode", "encode"]


def encode(name: str, t: torch.Tensor, settings: TensorSettings) -> Coded:
    """``t`` coded as ``settings.coding`` says (``auto`` is the policy's to decide, not a coding)."""
    return REGISTRY[settings.coding].encode(name, t, settings)


def decode(
    name: str, entry: dict[str, Any], stored: Mapping[str, torch.Tensor], device: str | torch.device
) -> torch.Tensor:
    """Rebuild one dense tensor on ``device``, in its original dtype and shape (entry checked)."""
    return REGISTRY[entry["coding"]].decode(name, entry, stored, device)
