"""Compressed-domain inference for a handler: its model's layers swapped for ones that compute
from their weights' JPEG coefficients (``jpegweights.compressed``), and its example run again.

>>> handler = load(manifest, state)                           # the dense model, as usual
>>> report = compress(handler, package_bytes, state)           # swaps layers in place
>>> report["resident_bytes"], report["float32_bytes"]
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from jpegweights.codec.buffers import release_freed_memory
from jpegweights.compressed import swap_layers

from .base import Handler
from .errors import ArchitectureError

log = logging.getLogger("jpegweights.handlers")

__all__ = ["compress"]


def compress(
    handler: Handler, package: bytes | bytearray | memoryview, state: Mapping[str, torch.Tensor], policy: str = "auto"
) -> dict[str, Any]:
    """Swap the layers of the handler's module whose weights ``package`` codes as JPEG (``state``
    is its decoded state_dict; see ``jpegweights.compressed.swap_layers`` for the report), then
    run the handler's example again: ``ArchitectureError`` if the model no longer runs."""
    report = swap_layers(handler.module, package, state, policy)
    if report["layers"]:  # the model must still take its own example
        try:
            handler.signature = handler.measure(handler.run(handler.decode_request(handler.example())))
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise ArchitectureError(
                f"the model does not run in the compressed domain: {type(exc).__name__}: {str(exc)[:200]}"
            ) from None
    log.info(
        "compressed domain: %d layers swapped, %d dense, %s resident weight bytes",
        report["layers"],
        len(report["dense"]),
        f"{report['resident_bytes']:,}",
    )
    release_freed_memory()
    return report
