"""One tensor's coded form, and what every coding's entry and ranges share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..container import DTYPE_NAMES
from ..manifest import affine


@dataclass
class Coded:
    """One tensor's coded form: the manifest entry and the tensors it stores.

    >>> coded = codings.encode("fc.weight", w, EncodeConfig().for_tensor("fc.weight"))
    >>> coded.nbytes, coded.decode().shape
    """

    name: str
    entry: dict[str, Any]
    stored: dict[str, torch.Tensor]

    def decode(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """The dense tensor, rebuilt by the same code path as ``decode``."""
        from . import decode  # the registry imports the codings, which build Coded: imported on use

        return decode(self.name, self.entry, self.stored, device)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.stored.values())


def base_entry(t: torch.Tensor, coding: str) -> dict[str, Any]:
    """The fields every entry has: its coding, dtype and shape."""
    return {"coding": coding, "dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape)}


def row_ranges(
    entry: dict[str, Any], stored: Mapping[str, torch.Tensor], device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """A checked entry's ``(scale, offset)``, each ``(rows, 1)`` float32: broadcast over each row."""
    scale, offset = affine(entry, stored, device)
    return scale[:, None], offset[:, None]
