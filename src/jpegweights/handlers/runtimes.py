"""Which runtime runs a handler's module: eager PyTorch, or ONNX Runtime on the CPU.

ONNX Runtime runs a graph exported, in memory, from the module as the package built it: the
``.jpw`` stays the only artifact. It gives more forward passes per second than eager PyTorch
(``benchmarks/runtimes.py``; docs/service.md, "Runtimes"). A module that cannot be exported, a
session that cannot be built, or answers further from eager PyTorch's than ``TOLERANCE`` fall
back to eager PyTorch, with the reason:

    choice = accelerate(handler, "auto", threads=1)
    choice.runtime, choice.reason       # ('onnxruntime', None) or ('eager', 'why not')
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from jpegweights.compressed.modules import CompressedLinear

from .base import Handler
from .errors import described, passes_through

RUNTIMES = ("auto", "eager", "onnxruntime")
# An exported graph's answers may differ from eager PyTorch's by this much, relative to the
# largest output: kernels sum in another order (1e-6 measured on every bundled model); a wrong
# export is off by whole units (a transformer traced in inference mode was off by 1.6 in 6).
TOLERANCE = 1e-4
# Weights past this stay in PyTorch: the export holds a serialized copy and the session another
# while it loads (ONNX's protobuf cannot hold 2 GiB anyway)
MAX_EXPORT_BYTES = 1 << 30


@dataclass(frozen=True)
class Choice:
    runtime: str  # "eager" or "onnxruntime"
    reason: str | None = None  # why not the runtime asked for (None: it runs)
    version: str = ""


class OnnxRunner:
    """Calls an ONNX Runtime session as the handler calls its module: positional or keyword
    tensors in, the first output as a tensor out. Safe from several threads at once."""

    def __init__(self, session: Any, names: list[str], nbytes: int):
        self.session, self.names = session, names
        self.taken = {i.name for i in session.get_inputs()}  # the export drops inputs the module ignores
        self.nbytes = nbytes  # the weights the session holds: its own copy of the module's

    def __call__(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        feeds = dict(zip(self.names, args)) | kwargs
        out = self.session.run(None, {k: np.ascontiguousarray(v.numpy()) for k, v in feeds.items() if k in self.taken})
        return torch.from_numpy(out[0])


class _Exported(torch.nn.Module):
    """The module as the handler calls it, with its inputs in order and its first output."""

    def __init__(self, module: torch.nn.Module, names: list[str], keywords: bool):
        super().__init__()
        self.module, self.names, self.keywords = module, names, keywords

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        out = self.module(**dict(zip(self.names, args))) if self.keywords else self.module(*args)
        return out if isinstance(out, torch.Tensor) else out[0]


def accelerate(handler: Handler, runtime: str = "auto", threads: int = 1) -> Choice:
    """Run ``handler``'s module on ``runtime`` from now on: ``eager``; ``onnxruntime`` (each
    pass on ``threads`` intra-op threads); ``auto``, ONNX Runtime where it is installed and the
    handler runs on the CPU. Returns what runs it, and why not ONNX Runtime when it does not."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    handler.runner = None
    if runtime == "eager" or runtime == "auto" and handler.device.type != "cpu":
        return Choice("eager")
    try:
        import onnxruntime
    except ImportError:
        return Choice("eager", "onnxruntime is not installed (pip install 'jpegweights[onnx]')")
    try:
        _onnx(handler, onnxruntime, threads)
        return Choice("onnxruntime", version=onnxruntime.__version__)
    except _Unsupported as exc:
        return Choice("eager", str(exc))
    except BaseException as exc:  # an exporter or a session that fails on this module: eager serves it
        if passes_through(exc):
            raise
        return Choice("eager", f"the module cannot run on ONNX Runtime: {described(exc)}")


class _Unsupported(Exception):
    pass


def _onnx(handler: Handler, onnxruntime: Any, threads: int) -> None:
    if handler.device.type != "cpu":
        raise _Unsupported(f"ONNX Runtime serves CPU models here; this one runs on {handler.device.type}")
    if any(isinstance(m, CompressedLinear) for m in handler.module.modules()):
        raise _Unsupported("its layers run from JPEG coefficients (compressed_domain), which ONNX cannot express")
    nbytes = sum(t.numel() * t.element_size() for t in handler.module.state_dict().values())
    if nbytes > MAX_EXPORT_BYTES:
        raise _Unsupported(f"its weights are {nbytes:,} bytes; ONNX Runtime takes up to {MAX_EXPORT_BYTES:,} here")
    inputs, dynamic, keywords = handler.module_inputs()
    names = list(inputs)
    exported = _Exported(handler.module, names, keywords).eval()
    graph = io.BytesIO()
    # no_grad, not inference_mode: a transformer traced in inference mode exported a wrong graph
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            exported,
            tuple(inputs.values()),
            graph,
            input_names=names,
            output_names=["output"],
            dynamic_axes={n: {d: f"{n}_{d}" for d in dims} for n, dims in dynamic.items()},
            dynamo=False,
            opset_version=17,
        )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # a shared CPU: wait, don't spin
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(graph.getvalue(), options, providers=["CPUExecutionProvider"])
    del graph
    runner = OnnxRunner(session, names, nbytes)
    _check(exported, runner, inputs)
    handler.runner = runner


def _check(exported: Callable, runner: OnnxRunner, inputs: dict[str, torch.Tensor]) -> None:
    """``_Unsupported`` unless the session answers the export's own inputs, and the same
    inputs with one row, within ``TOLERANCE`` of eager PyTorch."""
    for batch in (inputs, {k: v[:1] for k, v in inputs.items()}):
        with torch.no_grad():
            want = exported(*batch.values()).float()
        got = runner(*batch.values()).float()
        if got.shape != want.shape:
            raise _Unsupported(f"the exported graph answers shape {list(got.shape)}, not {list(want.shape)}")
        scale = max(1.0, float(want.abs().max()))
        diff = float((got - want).abs().max())
        if not diff <= TOLERANCE * scale:
            raise _Unsupported(f"the exported graph's answers differ from eager PyTorch's by {diff:.3g}")
