"""Encode settings: one frozen, versioned config with per-tensor overrides by name or glob.

>>> cfg = EncodeConfig(quality=20, quality_for={"*.bias": 90, "4.weight": 50})
>>> cfg.quality_of("4.weight")
50
>>> EncodeConfig.from_dict(cfg.to_dict()) == cfg
True
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .errors import ConfigError
from .jpeg import QTABLES
from .tiles import RANGES, check_layout

CODINGS = ("auto", "jpeg", "int8", "raw")
RAW_DTYPES = ("same", "float16")
QTABLE_CHOICES = ("auto", *QTABLES)


def _pairs(value: Mapping[str, Any] | tuple | None) -> tuple[tuple[str, Any], ...]:
    if value is None:
        return ()
    items = value.items() if isinstance(value, Mapping) else value
    return tuple((str(k), v) for k, v in items)


def _lookup(pairs: tuple[tuple[str, Any], ...], name: str, default: Any) -> Any:
    """Exact name first, then the first matching glob, then the default."""
    for pattern, value in pairs:
        if pattern == name:
            return value
    for pattern, value in pairs:
        if fnmatch.fnmatchcase(name, pattern):
            return value
    return default


@dataclass(frozen=True)
class EncodeConfig:
    """How ``encode`` codes each tensor.

    - ``quality`` 1..100: JPEG quality (IJG scale); ``quality_for`` overrides by name or glob.
    - ``coding``: ``auto`` picks per tensor by measured error (see docs/codec.md); or force
      ``jpeg``, ``int8`` (8-bit per-row affine) or ``raw``; ``coding_for`` overrides.
    - ``qtable``: ``auto`` (measured per tensor), ``standard`` (photographic) or ``flat``.
    - ``layout``: ``auto``, ``matrix`` or ``rows:HxW``; ``layout_for`` overrides.
    - ``lossless_below``: float tensors with fewer elements, 1-D tensors and integer tensors
      are coded ``raw``.
    - ``raw_dtype``: ``same`` keeps raw tensors as they are; ``float16`` stores raw float32 and
      float64 tensors (the small and 1-D ones: biases, norms) in float16, half the bytes.
    - ``int8_below``: under ``auto``, float matrices with fewer elements are coded int8: on
      small (often output) layers JPEG saves few bytes and costs accuracy.
    - ``clip_sigma``: clip each row's range to mean ± k·std (None: full min..max range).
    - ``outliers``: under JPEG, values more than k std from their row's mean are stored apart
      (float16, exact position) and the range clipped to mean ± k·std (None: none apart).
    - ``ranges``: ``row`` (one affine range per row) or ``tensor`` (one for the whole tensor).
    - ``structure_ratio``: under ``qtable="auto"``, the standard table is kept when its SNR
      (dB) is at least this fraction of the flat table's at the same quality.
    - ``max_atlas_pixels``: the largest atlas; smaller atlases decode in parallel.
    - ``clamp_free``: JPEG streams are coded again where a block would decode outside 0..255,
      so that compressed-domain inference computes with exactly the weights a decode gives,
      up to rounding (docs/compressed-domain.md).
    - ``compact``: format version 4, for small models whose JSON header is much of the file:
      the header is deflated (the packed container) and a range shared by a whole tensor is
      stored once instead of once per row.
    """

    quality: int = 20
    quality_for: tuple[tuple[str, int], ...] = ()
    coding: str = "auto"
    coding_for: tuple[tuple[str, str], ...] = ()
    qtable: str = "auto"
    layout: str = "auto"
    layout_for: tuple[tuple[str, str], ...] = ()
    lossless_below: int = 4096
    raw_dtype: str = "same"
    int8_below: int = 16384
    clip_sigma: float | None = None
    outliers: float | None = None
    ranges: str = "tensor"
    structure_ratio: float = 0.4
    max_atlas_pixels: int = 1 << 20
    clamp_free: bool = False
    compact: bool = False
    version: int = field(default=1)

    def __post_init__(self) -> None:
        for name in ("quality_for", "coding_for", "layout_for"):
            object.__setattr__(self, name, _pairs(getattr(self, name)))
        for name, q in ((None, self.quality), *self.quality_for):
            if isinstance(q, bool) or not isinstance(q, int) or not 1 <= q <= 100:
                where = f" for {name!r}" if name else ""
                raise ConfigError(f"quality{where} must be an integer in 1..100, got {q!r}")
        for name, c in ((None, self.coding), *self.coding_for):
            if c not in CODINGS:
                raise ConfigError(f"coding{' for ' + repr(name) if name else ''} must be one of {CODINGS}, got {c!r}")
        if self.raw_dtype not in RAW_DTYPES:
            raise ConfigError(f"raw_dtype must be one of {RAW_DTYPES}, got {self.raw_dtype!r}")
        if self.qtable not in QTABLE_CHOICES:
            raise ConfigError(f"qtable must be one of {QTABLE_CHOICES}, got {self.qtable!r}")
        for _, layout in ((None, self.layout), *self.layout_for):
            check_layout(layout)
        for name in ("lossless_below", "int8_below"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative int, got {value!r}")
        if self.outliers is not None and not (isinstance(self.outliers, (int, float)) and not isinstance(self.outliers, bool) and 0 < self.outliers < float("inf")):
            raise ConfigError(f"outliers must be a positive number of standard deviations or None, got {self.outliers!r}")
        if self.clip_sigma is not None and not self.clip_sigma > 0:
            raise ConfigError(f"clip_sigma must be positive or None, got {self.clip_sigma!r}")
        if self.ranges not in RANGES:
            raise ConfigError(f"ranges must be one of {RANGES}, got {self.ranges!r}")
        if not 0 <= self.structure_ratio <= 1:
            raise ConfigError(f"structure_ratio must be in 0..1, got {self.structure_ratio!r}")
        if not isinstance(self.max_atlas_pixels, int) or self.max_atlas_pixels < 64 * 64:
            raise ConfigError(f"max_atlas_pixels must be an int >= 4096, got {self.max_atlas_pixels!r}")
        for name in ("clamp_free", "compact"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.version != 1:
            raise ConfigError(f"unknown EncodeConfig version {self.version}")

    def quality_of(self, name: str) -> int:
        return _lookup(self.quality_for, name, self.quality)

    def coding_of(self, name: str) -> str:
        return _lookup(self.coding_for, name, self.coding)

    def layout_of(self, name: str) -> str:
        return _lookup(self.layout_for, name, self.layout)

    def at_quality(self, quality: int) -> EncodeConfig:
        """These settings with every tensor at ``quality`` (per-tensor qualities dropped): a
        package at another quality, coded as this one is."""
        return replace(self, quality=quality, quality_for=())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name in ("quality_for", "coding_for", "layout_for"):
            d[name] = dict(d[name])
        if d["outliers"] is None:  # absent when unused: packages that do not use it keep their bytes
            del d["outliers"]
        for name in ("clamp_free", "compact"):  # likewise
            if not d[name]:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EncodeConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown EncodeConfig fields {sorted(unknown)}")
        return cls(**d)

