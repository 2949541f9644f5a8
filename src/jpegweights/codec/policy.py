"""The encode policy: which coding, table and layout each tensor gets, by measurement.

>>> coded = choose("fc.weight", w, EncodeConfig(qtable="auto"))    # a codings.Coded
>>> coded.entry["coding"], coded.entry.get("qtable")

Raw where coding cannot pay (small, 1-D or integer tensors), int8 for small matrices or where it
dominates, else JPEG with the table and layout of the lowest rate-distortion cost. The
measurements behind these rules are in docs/codec.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch

from . import codings, compensate
from .codings import Coded
from .config import EncodeConfig, TensorSettings
from .container import DTYPE_NAMES
from .errors import CodecError, ConfigError, InvalidTensorError, show
from .jpeg import QTABLES
from .tiles import affine_representable, parse_layout, row_blocks, view2d


def check_input(name: str, t: Any) -> torch.Tensor:
    """``t`` detached on the CPU; ``InvalidTensorError`` for a non-tensor, an unsupported dtype
    or NaN/Inf values."""
    if not isinstance(t, torch.Tensor):
        raise InvalidTensorError(f"expected a torch.Tensor, got {type(t).__name__}", tensor=name)
    if t.dtype not in DTYPE_NAMES:
        raise InvalidTensorError(f"unsupported dtype {t.dtype}", tensor=name)
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise InvalidTensorError(f"{bad} NaN/Inf values; refusing to encode", tensor=name)
    return t.detach().cpu()


def snr_db(x: torch.Tensor, y: torch.Tensor) -> float:
    """Signal-to-noise ratio of reconstruction ``y`` against ``x``, in dB.

    >>> snr_db(torch.ones(4), torch.ones(4))
    inf
    """
    x, y = x.reshape(-1), y.reshape(-1)
    noise = signal = 0.0
    for block in row_blocks(len(x), 1):  # in float64 a block at a time: a whole embedding's took 800 MB
        a, b = x[block].double(), y[block].double()
        noise, signal = noise + float(((a - b) ** 2).sum()), signal + float((a**2).sum())
    if noise == 0:
        return math.inf
    return -math.inf if signal == 0 else 10 * math.log10(signal / noise)


def measure(coded: Coded, t: torch.Tensor) -> float:
    """SNR of one coded tensor against the original ``t``."""
    return snr_db(t, coded.decode())


def cost(coded: Coded, snr: float, numel: int) -> float:
    """Rate-distortion cost: bits per value priced at 6.02 dB each (the high-rate slope)."""
    return 6.02 * coded.nbytes * 8 / numel - snr


def layouts_for(layout: str, shape: tuple[int, ...]) -> list[str]:
    """Under ``auto``, a square row length tries the seed's ``rows:s×s`` layout and the matrix."""
    if layout != "auto":
        return [layout]
    kind, tile = parse_layout("auto", shape)
    return [f"rows:{tile[0]}x{tile[1]}", "matrix"] if kind == "rows" else ["matrix"]


def settled_coding(t: torch.Tensor, settings: TensorSettings) -> str | None:
    """``"raw"`` or ``"int8"`` where ``choose`` codes the tensor so at every quality (its kind,
    size or values, or the settings, decide); ``None`` where it measures JPEG codings (a tensor
    whose coding is ``auto`` can still come out int8 at a quality where int8 dominates)."""
    coding = settings.coding
    if (
        not t.is_floating_point()
        or t.dim() < 2
        or t.numel() == 0
        or (coding == "auto" and t.numel() < settings.lossless_below)
    ):
        return "raw"
    if not affine_representable(t):  # values near the dtype's limits: 8-bit codes could overflow
        return "raw"
    if coding == "raw" or coding == "int8":
        return coding
    if coding == "auto" and t.numel() < settings.int8_below:
        return "int8"
    return None


def choose(name: str, t: torch.Tensor, config: EncodeConfig, factor: torch.Tensor | None = None) -> Coded:
    """Code one (checked) tensor as the config says; ``auto`` settings are decided by measurement.

    - layout: among the candidate layouts, the lowest rate-distortion ``cost``;
    - qtable: ``standard`` if it keeps at least ``structure_ratio`` of the flat table's SNR
      (in dB) at the same quality: the tensor has the spatial structure JPEG's photographic
      table assumes. Otherwise ``flat``;
    - coding: int8 if it dominates the chosen JPEG (no more bytes, no lower SNR).
    These are decided without ``factor``; a JPEG in the matrix layout is then coded with error
    compensation (or, given a lookup table's row weights, with each row's step by its weight).
    """
    settings = config.for_tensor(name)
    settled = settled_coding(t, settings)
    if settled is not None:
        return codings.encode(name, t, replace(settings, coding=settled))
    chosen, snr = best_jpeg(name, t, settings)
    if settings.coding == "auto":
        int8 = codings.int8.encode(name, t, settings)
        if int8.nbytes <= chosen.nbytes and measure(int8, t) >= snr:
            return int8
    if factor is not None and chosen.entry["layout"] == "matrix":
        chosen = codings.jpeg.encode(name, t, replace(settings, qtable=chosen.entry["qtable"], layout="matrix"), factor)
    return chosen


def best_jpeg(name: str, t: torch.Tensor, settings: TensorSettings) -> tuple[Coded, float]:
    """The JPEG coding of ``t`` that ``choose`` keeps among the settings' tables and layouts, and its SNR."""
    best: dict[str, tuple[Coded, float]] = {}  # qtable -> (coded, snr) with its best layout
    for table in QTABLES if settings.qtable == "auto" else (settings.qtable,):
        scored = []
        for layout in layouts_for(settings.layout, tuple(t.shape)):
            coded = codings.jpeg.encode(name, t, replace(settings, qtable=table, layout=layout))
            scored.append((coded, measure(coded, t)))
        best[table] = min(scored, key=lambda cs: cost(cs[0], cs[1], t.numel()))
    if len(best) == 1:
        (chosen,) = best.values()
        return chosen
    structured = best["standard"][1] >= settings.structure_ratio * best["flat"][1]
    return best["standard"] if structured else best["flat"]


class Factors:
    """``compensate.factor`` of each named matrix's input second moment, a lookup table's
    ``(rows,)`` vector ``compensate.row_weights``: computed when asked and kept until the next
    name is asked for, since a matrix's float64 factor is as large as its second moment (MPNet's
    take 1.2 GB together)."""

    def __init__(
        self, state: Mapping[str, torch.Tensor], hessians: Mapping[str, torch.Tensor] | None, config: EncodeConfig
    ):
        hessians = hessians or {}
        if hessians and config.outliers is not None:
            raise ConfigError("error compensation (hessians) does not combine with outliers apart")
        unknown = sorted(set(hessians) - set(state))
        if unknown:
            raise ConfigError(f"hessians name tensors that are not in the state_dict: {show(unknown[:5])}")
        self.state, self.hessians = state, hessians
        self.last: tuple[str, torch.Tensor] | None = None

    def get(self, name: str) -> torch.Tensor | None:
        """The factor of ``name``'s second moment, None without one. Raises ``CodecError``s
        naming the tensor for a second moment that is not one."""
        h = self.hessians.get(name)
        if h is None:
            return None
        if self.last is None or self.last[0] != name:
            self.last = None  # the previous factor is freed first
            rows, cols = view2d(self.state[name].shape)
            try:
                factor = (
                    compensate.row_weights(h, rows)
                    if isinstance(h, torch.Tensor) and h.dim() == 1
                    else compensate.factor(h, cols)
                )
            except CodecError as exc:
                raise type(exc)(str(exc), tensor=name) from None
            self.last = (name, factor)
        return self.last[1]
