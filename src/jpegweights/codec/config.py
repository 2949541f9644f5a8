"""Encode settings: one frozen, versioned config with per-tensor overrides by name or glob,
resolved once per tensor into ``TensorSettings``; ``PRESETS`` name the two settings in use.

>>> cfg = EncodeConfig(quality=20, quality_for={"*.bias": 90, "4.weight": 50})
>>> cfg.for_tensor("4.weight").quality
50
>>> EncodeConfig.from_dict(cfg.to_dict()) == cfg
True
>>> EncodeConfig.preset("seed", quality=30).ranges
'tensor'
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .errors import ConfigError
from .jpeg import QTABLES
from .tiles import RANGES, check_layout

CODINGS = ("auto", "jpeg", "int8", "raw")
RAW_DTYPES = ("same", "float16")
QTABLE_CHOICES = ("auto", *QTABLES)
# What a field absent from a stored config meant when the package was written: ``to_dict`` leaves
# out the first three when unused, and packages older than ``raw_dtype`` kept raw tensors as they were.
ABSENT = {"outliers": None, "clamp_free": False, "compact": False, "raw_dtype": "same"}


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
class TensorSettings:
    """One tensor's settings, resolved from an ``EncodeConfig`` by ``for_tensor``: what the
    codings and the encode policy read (``qtable`` and ``layout`` may still say ``auto``: the
    policy measures those).

    >>> EncodeConfig(coding_for={"*.bias": "raw"}).for_tensor("fc.bias").coding
    'raw'
    """

    quality: int
    coding: str
    qtable: str
    layout: str
    ranges: str
    raw_dtype: str
    clip_sigma: float | None
    outliers: float | None
    clamp_free: bool
    max_atlas_pixels: int
    lossless_below: int
    int8_below: int
    structure_ratio: float


@dataclass(frozen=True)
class EncodeConfig:
    """How ``encode`` codes each tensor. The defaults are the settings served (``PRESETS["default"]``):
    quality 90, the flat table, a range per row, small float tensors in float16, the compact
    container; measured best on every real model (docs/codec.md). ``PRESETS["seed"]`` is the seed
    experiment's (quality 20, tables and layouts measured per tensor, one range per tensor).

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

    quality: int = 90
    quality_for: tuple[tuple[str, int], ...] = ()
    coding: str = "auto"
    coding_for: tuple[tuple[str, str], ...] = ()
    qtable: str = "flat"
    layout: str = "auto"
    layout_for: tuple[tuple[str, str], ...] = ()
    lossless_below: int = 4096
    raw_dtype: str = "float16"
    int8_below: int = 16384
    clip_sigma: float | None = None
    outliers: float | None = None
    ranges: str = "row"
    structure_ratio: float = 0.4
    max_atlas_pixels: int = 1 << 20
    clamp_free: bool = False
    compact: bool = True
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
        for _, layout in ((None, self.layout), *self.layout_for):
            check_layout(layout)
        for name, choices in (("raw_dtype", RAW_DTYPES), ("qtable", QTABLE_CHOICES), ("ranges", RANGES)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        self._check_numbers()
        if self.version != 1:
            raise ConfigError(f"unknown EncodeConfig version {self.version}")

    def _check_numbers(self) -> None:
        for name in ("lossless_below", "int8_below"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative int, got {value!r}")
        k = self.outliers
        if k is not None and not (isinstance(k, (int, float)) and not isinstance(k, bool) and 0 < k < float("inf")):
            raise ConfigError(f"outliers must be a positive number of standard deviations or None, got {k!r}")
        if self.clip_sigma is not None and not self.clip_sigma > 0:
            raise ConfigError(f"clip_sigma must be positive or None, got {self.clip_sigma!r}")
        if not 0 <= self.structure_ratio <= 1:
            raise ConfigError(f"structure_ratio must be in 0..1, got {self.structure_ratio!r}")
        if not isinstance(self.max_atlas_pixels, int) or self.max_atlas_pixels < 64 * 64:
            raise ConfigError(f"max_atlas_pixels must be an int >= 4096, got {self.max_atlas_pixels!r}")
        for name in ("clamp_free", "compact"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> EncodeConfig:
        """A named preset (``PRESETS``), with some fields changed; ``ConfigError`` for an unknown
        name or field.

        >>> EncodeConfig.preset("seed", quality=50).quality
        50
        """
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; the presets are {sorted(PRESETS)}")
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown EncodeConfig fields {sorted(unknown)}")
        return replace(PRESETS[name], **overrides)

    def for_tensor(self, name: str) -> TensorSettings:
        """The settings of the tensor called ``name``, overrides by name or glob applied."""
        return TensorSettings(
            quality=self.quality_of(name), coding=self.coding_of(name), qtable=self.qtable,
            layout=self.layout_of(name), ranges=self.ranges, raw_dtype=self.raw_dtype,
            clip_sigma=self.clip_sigma, outliers=self.outliers, clamp_free=self.clamp_free,
            max_atlas_pixels=self.max_atlas_pixels, lossless_below=self.lossless_below,
            int8_below=self.int8_below, structure_ratio=self.structure_ratio,
        )  # fmt: skip

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
        for name in (
            "outliers",
            "clamp_free",
            "compact",
        ):  # absent when unused: packages that do not use them keep their bytes
            if d[name] == ABSENT[name]:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EncodeConfig:
        """The inverse of ``to_dict``, and the reader of the configs that packages store: a field
        absent from ``d`` takes the value its absence meant when the package was written
        (``ABSENT``), any other the default."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown EncodeConfig fields {sorted(unknown)}")
        return cls(**{**ABSENT, **d})


PRESETS: dict[str, EncodeConfig] = {
    "default": EncodeConfig(),  # what compress, import and the server code with
    "seed": EncodeConfig(
        quality=20, qtable="auto", ranges="tensor", raw_dtype="same", compact=False
    ),  # make report's MNIST packages
}
