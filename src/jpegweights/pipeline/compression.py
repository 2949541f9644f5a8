"""``compress``: a float model in, a package out, in one call, as torchao's ``quantize_(model,
config)`` is its whole feature. The CLI, fine-tuning and the benchmarks all call it.

>>> result = compress("model.safetensors", EncodeConfig(), data="photos/", target=0.01, metric="kl")
>>> result.save("model.jpw")

Without ``data``: every tensor at ``config``'s qualities. With ``data`` and no ``target``: the
same qualities, each Linear and convolution weight coded with error compensation fitted on
those inputs. With a ``target``: per-tensor qualities searched on ``data`` so that the model's
outputs move by at most ``target`` (``codec.allocate``), the measured curves kept in a cache.
The search meets the target on every kind of input: the user's data and, for text models, the
bundled kinds (``calibrate.bundled``) as a floor; ``held_out`` data, of a kind it never saw,
is measured on the package it made.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from jpegweights import cpus
from jpegweights.codec import Allocation, EncodeConfig, allocate, decode, encode
from jpegweights.codec.allocate import QUALITIES
from jpegweights.files import write_atomic
from jpegweights.handlers import Request
from jpegweights.handlers.errors import CalibrationError

from . import cache
from .calibrate import DEFAULT, METRICS, Calibration, read_inputs
from .models import load_state_dict

Source = Mapping[str, torch.Tensor] | torch.nn.Module | str | os.PathLike
Data = str | os.PathLike | Request
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Compressed:
    """What ``compress`` made: the package's bytes and the settings chosen (with a search, the
    per-tensor qualities), and, with a search, what it measured on the calibration inputs.

    ``distortion`` is the search's measure: mean KL, or 1 − mean cosine (``fidelity`` gives
    the cosine itself)."""

    data: bytes
    config: EncodeConfig
    original_bytes: int  # the tensors as given, in their own dtypes
    metric: str | None = None
    distortion: float | None = None
    evaluations: int = 0  # forward passes over the calibration inputs
    seconds: float = 0.0
    kinds: dict[str, float] = field(default_factory=dict)  # the package's distortion on each kind searched on
    held_out: float | None = None  # its distortion on the held-out data

    def as_fidelity(self, distortion: float) -> float:
        """A distortion in the target's terms: mean KL, or mean cosine."""
        return distortion if self.metric == "kl" else 1 - distortion

    @property
    def fidelity(self) -> float | None:
        """The measured value in the target's terms: mean KL, or mean cosine."""
        return None if self.distortion is None else self.as_fidelity(self.distortion)

    def save(self, path: str | os.PathLike) -> int:
        """Write the package atomically; return its size in bytes."""
        return write_atomic(path, self.data)


@cpus.torch_threads(1)  # a forward pass per CPU (Calibration)
def compress(
    source: Source,
    config: EncodeConfig | None = None,
    *,
    data: Data | None = None,
    target: float | None = None,
    metric: str | None = None,
    compensate: bool = True,
    rows_by_use: bool = True,
    qualities: Sequence[int] = QUALITIES,
    cache_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    architecture: dict[str, Any] | None = None,
    handler: dict[str, Any] | None = None,
    trust_code: bool = False,
    floor: bool = True,
    held_out: Data | None = None,
) -> Compressed:
    """Code ``source`` (a state_dict, a module, or a .safetensors/.pt file) as a package.

    - ``config``: the encode settings (default ``EncodeConfig()``); a search replaces its
      per-tensor qualities.
    - ``data``: calibration inputs, an image folder, a text file of one input per line, or a
      ``Request``; they run through the model, so it needs an ``architecture`` (from the file's
      metadata, or given) and a ``handler``. ``trust_code`` lets a python architecture run.
    - ``target`` with ``metric``: ``"kl"`` for the largest mean KL of the output distribution,
      ``"cosine"`` for the smallest mean cosine of the output vectors, among ``qualities``.
    - ``compensate``: error compensation (GPTQ's update) fitted on ``data``; ``rows_by_use``:
      with a target, a text model's token embeddings coded by how often each is used.
    - ``floor``: with a target, the bundled kinds of input for the model's kind (text, or colour photos) searched
      on too, the target met on each; ``data="default"``: those alone. ``held_out``: data of
      another kind, measured on the package made (``Compressed.held_out``).
    - ``cache_dir``: where measured curves are kept (default ``cache.default_dir()``);
      ``progress``: called with each line of progress.

    Raises ``ValueError`` for arguments that do not go together, ``CalibrationError`` for
    data the model cannot run on, ``ConfigError`` for bad settings, ``TargetError`` for a
    target no quality meets.

    >>> compress(model, data=Path("digits/"), target=0.01, metric="kl").config.quality_for
    (('1.weight', 30), ('3.weight', 50))
    """
    t0 = time.perf_counter()
    config = EncodeConfig() if config is None else config
    say = progress or (lambda _: None)
    limit = _limit(config, data, target, metric, compensate)
    state, architecture, handler = _resolve(source, architecture, handler)
    original = sum(t.numel() * t.element_size() for t in state.values())
    if data is not None and architecture is None:
        raise CalibrationError(
            "calibration runs the model, but the input names no architecture: give --architecture (and --handler)"
        )
    manifest = {"architecture": architecture, "handler": handler}
    found: Allocation | None = None
    hessians = None
    if data is not None and limit is None:
        hessians = _compensation(manifest, state, data, trust_code, say)
    elif data is not None:
        search = _Search(manifest, state, data, metric, limit, compensate, rows_by_use, trust_code, say, floor)
        found, hessians, measure = search.run(config, qualities, cache_dir)
        config = found.config
    package = encode(state, config, architecture, handler, hessians=hessians)
    hessians = None  # freed before the package is decoded: together they would outweigh the model
    result = Compressed(package, config, original, metric if found else None, found.distortion if found else None,
                        found.evaluations if found else 0)  # fmt: skip
    if found is not None:
        decoded = decode(package)
        kinds = measure.by_kind(decoded)
        held = None
        if held_out is not None:
            held = Calibration(manifest, state, _request(held_out), metric, trust_code=trust_code)(decoded)
            say(f"held out, {_where(held_out)}: {metric} {result.as_fidelity(held):.5f}")
        result = dataclasses.replace(result, kinds=kinds, held_out=held)
        say("the package on each kind: " + ", ".join(f"{k} {result.as_fidelity(v):.5f}" for k, v in kinds.items()))
    elif held_out is not None:
        raise ValueError("--held-out measures what a search made: give a fidelity target (--max-kl, --min-cosine)")
    return dataclasses.replace(result, seconds=time.perf_counter() - t0)


def _limit(
    config: EncodeConfig, data: Data | None, target: float | None, metric: str | None, compensate: bool
) -> float | None:
    """The distortion limit of ``target`` (None without one), once the arguments are checked."""
    if target is not None and data is None:
        raise ValueError("a fidelity target (--max-kl, --min-cosine) needs calibration data: --calibrate DATA")
    if data is not None and target is None and not compensate:
        raise ValueError(
            "--calibrate without a fidelity target (--max-kl, --min-cosine) only compensates errors: "
            "drop --no-compensate"
        )
    if data is not None and config.quality_for:
        raise ValueError("--quality-for and --calibrate both set per-tensor qualities: give one")
    if target is None:
        return None
    if metric == "kl":
        if not 0 < target < math.inf:
            raise ValueError(f"--max-kl must be positive, got {target}")
        return target
    if metric == "cosine":
        if not -1 <= target < 1:
            raise ValueError(f"--min-cosine must be in -1..1 (exclusive of 1), got {target}")
        return 1 - target
    raise ValueError(f"a fidelity target needs a metric, one of {METRICS}, got {metric!r}")


def _resolve(
    source: Source, architecture: dict | None, handler: dict | None
) -> tuple[dict[str, torch.Tensor], dict | None, dict | None]:
    """(state_dict, architecture, handler): those given win over the file's metadata."""
    if isinstance(source, torch.nn.Module):
        return {k: v.detach() for k, v in source.state_dict().items()}, architecture, handler
    if isinstance(source, Mapping):
        return dict(source), architecture, handler
    if isinstance(source, (str, os.PathLike)):
        state, named, served = load_state_dict(source)
        return state, architecture or named, handler or served
    raise TypeError(f"compress takes a state_dict, a torch.nn.Module or a path, got {type(source).__name__}")


def _request(data: Data) -> Request:
    return data if isinstance(data, Request) else read_inputs(Path(data))


def _kinds(data: Data) -> dict[str, Request]:
    """The user's calibration data as a kind of input (none for ``"default"``: the bundled ones)."""
    if isinstance(data, str) and data == DEFAULT:
        return {}
    return {"given" if isinstance(data, Request) else Path(data).stem: _request(data)}


def _where(data: Data) -> str:
    return "the request given" if isinstance(data, Request) else str(data)


def described(hessians: Mapping[str, torch.Tensor]) -> str:
    """What ``Calibration.hessians`` gave, in words: matrices, then lookup tables."""
    tables = sum(1 for h in hessians.values() if h.dim() == 1)
    words = f"{len(hessians) - tables} Linear and convolution weights coded as JPEG in the matrix layout"
    return words + (
        f"; the rows of {tables} token embedding(s) coded by how often each is used (--no-rows-by-use: not)"
        if tables
        else ""
    )


def _compensation(manifest: dict, state: dict, data: Data, trust_code: bool, say: Progress) -> dict[str, torch.Tensor]:
    """The second moments of every Linear and convolution weight's inputs over all of ``data``:
    error compensation at the given qualities, no search (and no rows by use, which would lower
    the fidelity a quality gives)."""
    measure = Calibration(manifest, state, _request(data), None, trust_code=trust_code, compensate=True)
    hessians = measure.hessians(lookups=False)  # a row's step by its use only where a search measures what it costs
    say(
        f"error compensation fitted on the {measure.samples} inputs from {_where(data)}, "
        f"for those of the {described(hessians)}"
    )
    return hessians


@dataclass
class _Search:
    """The calibrated search: per-tensor qualities within ``limit`` on ``data``."""

    manifest: dict
    state: dict
    data: Data
    metric: str
    limit: float
    compensate: bool
    rows_by_use: bool
    trust_code: bool
    say: Progress
    floor: bool = True

    def run(
        self, config: EncodeConfig, qualities: Sequence[int], cache_dir: str | os.PathLike | None
    ) -> tuple[Allocation, dict | None, Calibration]:
        """(the allocation, the second moments to code it with: every input's, None without
        compensation; the measure)."""
        t0 = time.perf_counter()
        measure = Calibration(
            self.manifest,
            self.state,
            _kinds(self.data),
            self.metric,
            trust_code=self.trust_code,
            compensate=self.compensate,
            floor=self.floor or self.data == DEFAULT,
        )
        self.say(
            f"calibrating on {measure.samples} inputs of {len(measure.kinds)} kind(s), {', '.join(measure.kinds)} "
            f"({self.metric}): the target is met on each"
        )
        hessians = measure.hessians(lookups=self.rows_by_use) if self.compensate else None
        if hessians is not None:
            fit = measure.samples - len(measure.labels)
            self.say(
                f"error compensation fitted on the first {fit} inputs and measured on the other "
                f"{measure.samples - fit}, for those of the {described(hessians)}"
            )
        name = cache.key(
            self.state,
            self.manifest["architecture"],
            self.manifest["handler"],
            config,
            self.metric,
            measure.request,  # every kind's inputs, the bundled ones too
            [self.compensate, self.rows_by_use, measure.kinds],
        )
        path = cache.cache_file(Path(cache_dir) if cache_dir is not None else None, name)
        points = cache.read(path)
        if points:
            self.say(f"reusing {len(points)} measured points from {path}")
        found = allocate(
            self.state,
            config,
            measure,
            self.limit,
            qualities,
            log=self.say,
            cache=points,
            save=lambda c: cache.write(path, c, self.say),
            hessians=hessians,
        )
        shown = f"KL {found.distortion:.5f}" if self.metric == "kl" else f"cosine {1 - found.distortion:.5f}"
        self.say(
            f"chosen in {time.perf_counter() - t0:.0f} s ({found.evaluations} forward passes over the calibration "
            f"inputs): {shown} on them"
        )
        if hessians is not None:
            self.say(f"coding with error compensation fitted on all {measure.own} inputs it may fit on")
            hessians = None  # freed first: MPNet's take 515 MB
            hessians = measure.hessians(every_input=True, lookups=self.rows_by_use)
        return found, hessians, measure
