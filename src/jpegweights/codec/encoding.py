"""``encode``: a state_dict to ``.jpw`` bytes, each tensor coded as the policy chooses.

>>> data = encode(model.state_dict(), EncodeConfig(quality=90))
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch

from .buffers import release_freed_memory
from .codings import Coded
from .config import EncodeConfig
from .container import FORMAT, FORMAT_VERSION, PACKED_VERSION, write
from .errors import CodecError, ConfigError
from .policy import check_input, Factors, choose


def encode(
    state_dict: Mapping[str, torch.Tensor],
    config: EncodeConfig | None = None,
    architecture: dict[str, Any] | None = None,
    handler: dict[str, Any] | None = None,
    *,
    hessians: Mapping[str, torch.Tensor] | None = None,
) -> bytes:
    """Encode a state_dict into ``.jpw`` bytes (deterministic: same input, same bytes).

    Raises ``InvalidTensorError`` for NaN/Inf or unsupported dtypes and ``ConfigError`` for bad
    settings, both naming the tensor. ``config`` defaults to ``EncodeConfig()`` (the served
    settings). ``architecture`` (how to build the module) and ``handler`` (how to serve it) are
    stored as opaque JSON: see ``jpegweights.handlers``. ``hessians``: per matrix, the second
    moment ``Σ xᵀx`` of the inputs it multiplies, for error compensation
    (``jpegweights.codec.compensate``); the format does not change.

    >>> encode({"w": torch.randn(64, 64)}, EncodeConfig.preset("seed"))[:8]
    """
    config = config or EncodeConfig()
    factor = Factors(state_dict, hessians, config)
    for what, value in (("architecture", architecture), ("handler", handler)):
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{what} is not JSON: {exc}") from exc
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": PACKED_VERSION if config.compact else FORMAT_VERSION,
        "tensors": {},
    }
    stored: dict[str, torch.Tensor] = {}
    for name, value in state_dict.items():
        coded = _coded(name, value, config, factor.get(name))
        clash = set(coded.stored) & (set(stored) | set(state_dict) - {name})
        if clash:
            raise ConfigError(f"stored key(s) {sorted(clash)} collide with other tensors' names", tensor=name)
        manifest["tensors"][name] = coded.entry
        stored.update(coded.stored)
        if config.compact:
            share_ranges(coded.entry, stored)
        if value.numel() >= 1 << 20:  # its float64 temporaries, or the heap creeps by tens of MB a matrix
            release_freed_memory()
    for key, value in (("architecture", architecture), ("handler", handler)):
        if value is not None:
            manifest[key] = value
    manifest["config"] = config.to_dict()
    return write(stored, manifest, packed=config.compact, consume=True)


def _coded(name: str, value: Any, config: EncodeConfig, factor: torch.Tensor | None) -> Coded:
    """One tensor checked and coded; a codec error names the tensor."""
    t = check_input(name, value)
    try:
        return choose(name, t, config, factor)
    except CodecError as exc:
        if exc.tensor is not None:
            raise
        raise type(exc)(str(exc), tensor=name) from exc


def share_ranges(entry: dict[str, Any], stored: dict[str, torch.Tensor]) -> None:
    """In ``stored``, the entry's scale and offset as one value each where every row has the
    same (format version 4)."""
    if "scale" not in entry:
        return
    scale, offset = stored[entry["scale"]], stored[entry["offset"]]
    if len(scale) > 1 and bool((scale == scale[0]).all()) and bool((offset == offset[0]).all()):
        stored[entry["scale"]], stored[entry["offset"]] = scale[:1].clone(), offset[:1].clone()
