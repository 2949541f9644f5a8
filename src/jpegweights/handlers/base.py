"""The handler shape: how one model turns requests into tensors and tensors into answers.

A handler is built from the package alone (its ``handler`` config and ``architecture``), knows
nothing of HTTP or batching, and runs the same way in the server, the client and the CLI:

    handler = load(manifest, state_dict, device="cpu")          # setup: the module, checked
    batch = handler.decode_request(Request(images=[jpeg_bytes]))  # one request -> tensors (n rows)
    outputs = handler.run(batch)                                  # batched forward pass
    answer = handler.encode_response(outputs, request)            # -> JSON-able dict

``run`` may be given many requests' batches joined by ``collate`` (the server's batcher does
this); ``split`` hands each request its rows back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .architectures import build, fuse_batchnorm
from .errors import HandlerConfigError, RequestError, show

Batch = dict[str, torch.Tensor]  # every tensor has the same number of rows


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as the Open Inference Protocol declares it. ``-1``: any size.
    ``source``: which field of a ``Request`` an input fills (``inputs``, ``images`` or ``text``)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise RequestError(f"this model has no input {name!r}; its inputs are {[s.name for s in self.inputs]}")


@dataclass
class Request:
    """One request, whatever the protocol: raw arrays, encoded image files, or texts, plus
    the handler's options (``top_k``, ``truncate``...)."""

    inputs: Any = None
    images: Sequence[bytes] | None = None
    text: Sequence[str] | None = None
    pairs: Sequence[Sequence[str]] | None = None
    options: dict[str, Any] = field(default_factory=dict)


MAX_SAMPLE_VALUES = 1 << 22  # values in one sample (a 3x1024x1024 image is 3.1 M): the load runs batches of them


def check_sample_shape(shape: tuple[int, ...], what: str) -> None:
    """``HandlerConfigError`` for an input shape whose samples hold more than ``MAX_SAMPLE_VALUES``:
    a few bytes of config that would cost gigabytes when the load measures its batch size."""
    if math.prod(shape) > MAX_SAMPLE_VALUES:
        raise HandlerConfigError(
            f"{what} {list(shape)} is {math.prod(shape)} values per sample; the limit is {MAX_SAMPLE_VALUES}"
        )


@dataclass(frozen=True)
class Limits:
    """What one request may hold, checked before any model runs: samples (images, texts, pairs
    count both of theirs, rows), pixels per image and in all, tokens in all (after truncation),
    and seconds of tokenizing (in a process of its own, stopped when they run out)."""

    max_samples: int = 64
    max_pixels: int = 40_000_000
    max_request_pixels: int = 1 << 62  # the server sets these (its Settings); local inputs are the caller's own
    max_tokens: int = 1 << 62
    tokenize_timeout_s: float | None = None


def option(request: Request, name: str, kind: type, default: Any) -> Any:
    value = request.options.get(name, default)
    if value is not default and (not isinstance(value, kind) or isinstance(value, bool) and kind is not bool):
        raise RequestError(f"option {name!r} must be {kind.__name__}, got {show(value)}")
    return value


def config_value(config: Mapping[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    if name not in config:
        if default is ...:
            raise HandlerConfigError(f"the handler config needs {name!r}")
        return default
    value = config[name]
    if (
        not isinstance(value, kind)
        or isinstance(value, bool)
        and bool not in (kind if isinstance(kind, tuple) else (kind,))
    ):
        raise HandlerConfigError(f"handler config {name!r} has the wrong type: {show(value)}")
    return value


class Handler:
    """Base class. Subclasses set ``name``, ``options`` (the request options they take), and
    implement ``configure``, ``example``, ``decode_request``, ``predict`` and ``encode_response``."""

    name: ClassVar[str] = ""
    options: ClassVar[frozenset[str]] = frozenset()
    module: nn.Module
    signature: Signature

    def __init__(self, config: Mapping[str, Any], architecture: Mapping[str, Any]):
        if not isinstance(config, Mapping):
            raise HandlerConfigError("the handler config must be a JSON object")
        self.config, self.architecture = dict(config), architecture
        self.device = torch.device("cpu")
        self.min_rows = 1  # batches are padded to this many rows (see ``run``)
        self.runner: Callable[..., torch.Tensor] | None = None  # runs the module instead (``runtimes``)
        self.configure()

    # ---- for subclasses

    def configure(self) -> None:
        """Check ``self.config`` (raise ``HandlerConfigError``); keep what the handler needs."""

    def example(self) -> Request:
        """A small valid request: run once at setup, so that a model that cannot take its own
        inputs fails at load, not on every request, and output shapes are measured."""
        raise NotImplementedError

    def decode_request(self, request: Request, limits: Limits = Limits()) -> Batch:
        raise NotImplementedError

    def predict(self, batch: Batch) -> Batch:
        raise NotImplementedError

    def forward(self, batch: Batch) -> torch.Tensor:
        """The module's own output for a batch of raw inputs (``PackagedModel(x)``)."""
        return self.call(batch["input"])

    def call(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> Any:
        """The module called on its inputs, by the runtime that serves it (``runtimes.accelerate``)."""
        return (self.module if self.runner is None else self.runner)(*args, **kwargs)

    def module_inputs(self) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, ...]], bool]:
        """What ``runtimes`` exports the module with: example inputs of two rows or more, by
        name, in the order ``forward`` passes them; each one's dimensions that vary between
        passes; and whether the module takes them by keyword. By default: ``input``, whose
        rows vary, positional."""
        x = self.decode_request(self.example())["input"]
        return {"input": torch.cat([x, x])}, {"input": (0,)}, False

    def encode_response(self, outputs: Batch, request: Request) -> dict[str, Any]:
        raise NotImplementedError

    def output_arrays(self, outputs: Batch) -> dict[str, np.ndarray]:
        """The outputs as the signature declares them (for the v2 protocol)."""
        return {k: v.numpy() for k, v in outputs.items()}

    def describe(self) -> dict[str, Any]:
        """What ``/models`` reports about this handler beyond its signature."""
        return {}

    def lookups(self, batches: Sequence[Batch]) -> dict[str, torch.Tensor]:
        """For each lookup table of the module whose rows the inputs select (a text model's
        token embeddings), by its state key: a ``(rows,)`` float64 weight of how often each row
        is expected to be looked up, given ``batches`` (``decode_request``'s). Calibration hands
        them to the codec, which codes the rows used least with coarser steps. None by default."""
        return {}

    def positions(self, batch: Batch) -> torch.Tensor | None:
        """For a batch of sequences padded to one length (``decode_request``'s): a ``(samples,
        length)`` bool tensor, true where a position holds an input rather than padding.
        Calibration leaves the padding out of the second moments of a Linear layer's inputs, as
        no output depends on it. None (nothing padded) by default."""
        return None

    # ---- shared

    def setup(
        self, state: Mapping[str, torch.Tensor], device: str | torch.device = "cpu", *, trust_code: bool = False
    ) -> Handler:
        self.device = torch.device(device)
        self.rebuild(state, trust_code=trust_code)
        self.signature = self.measure(self.run(self.decode_request(self.example())))
        return self

    def rebuild(self, state: Mapping[str, torch.Tensor], *, trust_code: bool = False) -> None:
        """The module built again from ``state`` (BatchNorm folded), without the example run:
        calibration swaps in other values of the same tensors many times."""
        self.module = fuse_batchnorm(build(self.architecture, state, self.device, trust_code=trust_code))

    def measure(self, outputs: Batch) -> Signature:
        raise NotImplementedError

    @torch.inference_mode()
    def run(self, batch: Batch) -> Batch:
        """``predict`` on a batch, padded with zero rows to ``min_rows``: CPU kernels for tiny
        batches sum in another order, and padding makes an answer independent of its batch."""
        n = rows(batch)
        if n < self.min_rows:
            batch = {k: torch.cat([v, v.new_zeros((self.min_rows - n, *v.shape[1:]))]) for k, v in batch.items()}
        batch = {k: v.to(self.device) for k, v in batch.items()}
        return {k: v[:n].cpu() for k, v in self.predict(batch).items()}


def rows(batch: Batch) -> int:
    return len(next(iter(batch.values())))


def collate(batches: Sequence[Batch]) -> Batch:
    """Several requests' batches as one: tensors joined along rows, shorter ones zero-padded
    in their other dimensions (token sequences of different lengths)."""
    if len(batches) == 1:
        return batches[0]
    out = {}
    for key in batches[0]:
        parts = [b[key] for b in batches]
        size = [max(p.shape[d] for p in parts) for d in range(1, parts[0].dim())]
        padded = []
        for p in parts:
            pad = [x for d in reversed(range(1, p.dim())) for x in (0, size[d - 1] - p.shape[d])]
            padded.append(torch.nn.functional.pad(p, pad) if any(pad) else p)
        out[key] = torch.cat(padded)
    return out


def split(outputs: Batch, sizes: Sequence[int]) -> list[Batch]:
    """``collate``'s inverse for outputs: each request's rows."""
    out, start = [], 0
    for n in sizes:
        out.append({k: v[start : start + n] for k, v in outputs.items()})
        start += n
    return out
