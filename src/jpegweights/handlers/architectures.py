"""Modules from a package's ``architecture``: the JSON that says how to build them.

    {"kind": "sequential", "input_shape": [1, 28, 28], "layers": [...]}     (``kind`` may be left out)
    {"kind": "torchvision", "name": "mobilenet_v2", "kwargs": {"num_classes": 1000}}
    {"kind": "transformers", "config": {...config.json...}}                  (needs ``transformers``)
    {"kind": "python", "factory": "package.module:callable", "kwargs": {}}   (trusted stores only)

>>> module = build(architecture, state_dict)

Every kind is first built on the ``meta`` device (no memory, no initialisation), so that an
enormous or impossible architecture is refused before anything is allocated and the tensors
are checked against the module's names and shapes; only then is the module filled with them.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import re
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from . import sequential
from .errors import ArchitectureError, UntrustedCodeError, described, passes_through, show

MAX_PARAMETERS = 1 << 31  # 8 GiB of float32: far above any model this format is meant for
KINDS = ("sequential", "torchvision", "transformers", "python")
_SCALARS = (str, int, float, bool, type(None))


def kind_of(architecture: Any) -> str:
    if not isinstance(architecture, dict):
        raise ArchitectureError("architecture must be a JSON object")
    kind = architecture.get("kind", "sequential")
    if kind not in KINDS:
        raise ArchitectureError(f"unknown architecture kind {show(kind)} (known: {', '.join(KINDS)})")
    return kind


def title(architecture: Any) -> str:
    """One line naming an architecture, for people: "Sequential: Flatten, Linear 784→512, ...",
    "torchvision mobilenet_v2", "transformers BertModel"."""
    kind = kind_of(architecture)
    if kind == "sequential":

        def layer(spec: dict) -> str:
            if spec.get("type") == "Linear":
                return f"Linear {spec.get('in_features')}→{spec.get('out_features')}"
            if spec.get("type") == "Conv2d":
                return f"Conv2d {spec.get('in_channels')}→{spec.get('out_channels')}"
            return str(spec.get("type"))

        return "Sequential: " + ", ".join(
            layer(spec) for spec in architecture.get("layers", []) if isinstance(spec, dict)
        )
    if kind == "torchvision":
        return f"torchvision {architecture.get('name')}"
    if kind == "transformers":
        names = architecture.get("config", {}).get("architectures") or [
            architecture.get("config", {}).get("model_type", "")
        ]
        return f"transformers {names[0]}"
    return f"python {architecture.get('factory')}"


PRELOAD = {"torchvision": "torchvision.models", "transformers": "transformers"}
_preloading: dict[str, threading.Thread] = {}


def preload(architecture: Any) -> None:
    """Start importing the library ``architecture`` will need (torchvision: about 1 s; a
    transformers model's own module too: MPNet's, 1.8 s), in a background thread: the client
    calls it with the (unchecked) manifest of a package still downloading."""
    module = PRELOAD.get(architecture.get("kind")) if isinstance(architecture, dict) else None
    if module is not None and module not in sys.modules and module not in _preloading:
        config = architecture.get("config")
        model_type = config.get("model_type") if isinstance(config, dict) else None
        thread = _preloading[module] = threading.Thread(
            target=_import_quietly, args=(module, model_type), daemon=True, name=f"preload-{module}"
        )
        thread.start()


def _preloaded(module: str) -> None:
    """Wait for a preload of ``module`` still under way: importing a package from two threads at
    once can see it half initialised (transformers' lazy module raises ImportError then)."""
    thread = _preloading.get(module)
    if thread is not None:
        thread.join()


def _import_quietly(module: str, model_type: Any = None) -> None:
    try:
        importlib.import_module(module)
        if module == "transformers" and isinstance(model_type, str) and re.fullmatch(r"[a-z0-9_]{1,64}", model_type):
            from transformers.models.auto.configuration_auto import model_type_to_module_name

            name = model_type_to_module_name(model_type)
            importlib.import_module(f"transformers.models.{name}.modeling_{name}")
    except ImportError:  # building the module will say what is missing
        pass


def _fields(architecture: dict[str, Any], required: set[str], optional: set[str] = frozenset()) -> None:
    missing, extra = required - set(architecture), set(architecture) - required - optional - {"kind"}
    if missing or extra:
        raise ArchitectureError(
            f"{architecture['kind']} architecture: missing {show(sorted(missing), 200)}, "
            f"unknown {show(sorted(extra), 200)}"
        )


def _kwargs(architecture: dict[str, Any]) -> dict[str, Any]:
    kwargs = architecture.get("kwargs", {})
    if not isinstance(kwargs, dict) or not all(
        isinstance(k, str) and isinstance(v, _SCALARS) for k, v in kwargs.items()
    ):
        raise ArchitectureError(
            f"{architecture['kind']} architecture: kwargs must map names to JSON scalars, got {show(kwargs)}"
        )
    return kwargs


def _torchvision(architecture: dict[str, Any], trust_code: bool) -> Callable[[], nn.Module]:
    _fields(architecture, {"name"}, {"kwargs"})
    _preloaded("torchvision.models")
    import torchvision.models

    name, kwargs = architecture["name"], _kwargs(architecture)
    if not isinstance(name, str) or name not in torchvision.models.list_models():
        raise ArchitectureError(f"torchvision has no model {show(name)}")
    if "weights" in kwargs or "weights_backbone" in kwargs:  # would download: the package holds the weights
        raise ArchitectureError("torchvision architecture: kwargs may not name weights; the package holds them")
    return lambda: torchvision.models.get_model(name, **kwargs)


def _transformers(architecture: dict[str, Any], trust_code: bool) -> Callable[[], nn.Module]:
    _fields(architecture, {"config"})
    config = architecture["config"]
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ArchitectureError("transformers architecture: config must be a config.json object with a model_type")
    if "auto_map" in config:  # remote code: never run from a package
        raise ArchitectureError("transformers architecture: configs with auto_map (remote code) are not supported")
    for key, value in config.items():  # num_hidden_layers, n_layer, encoder_layers...: each a module to build
        if key.endswith(("layers", "layer")) and isinstance(value, int) and value > sequential.MAX_LAYERS:
            raise ArchitectureError(
                f"transformers architecture: config {key!r} is {value}; the limit is {sequential.MAX_LAYERS} layers"
            )
    _preloaded("transformers")
    try:
        from transformers import AutoConfig, AutoModel
    except ImportError as exc:
        raise ArchitectureError(
            f"this package needs the 'transformers' library: pip install 'jpegweights[models]' ({str(exc)[:200]})"
        ) from None
    try:
        hf_config = AutoConfig.for_model(**config)
    except Exception as exc:  # its checks raise many types (huggingface_hub's validation errors for typed fields)
        raise ArchitectureError(f"transformers architecture: bad config: {described(exc)}") from None
    return lambda: AutoModel.from_config(hf_config, trust_remote_code=False)


def _python(architecture: dict[str, Any], trust_code: bool) -> Callable[[], nn.Module]:
    _fields(architecture, {"factory"}, {"kwargs"})
    factory, kwargs = architecture["factory"], _kwargs(architecture)
    if not trust_code:
        raise UntrustedCodeError(
            f"the package's architecture runs code ({show(factory)}); load it from a trusted store (trust_code=True) "
            "only if you trust its author"
        )
    return lambda: import_object(factory)(**kwargs)


def import_object(path: Any) -> Any:
    """``"package.module:name"`` -> the object (only ever called for trusted packages)."""
    if not isinstance(path, str) or path.count(":") != 1:
        raise ArchitectureError(f"an import path is 'package.module:name', got {show(path)}")
    module, name = path.split(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ArchitectureError(f"cannot import {show(path)}: {str(exc)[:200]}") from None


def _sequential(architecture: dict[str, Any], trust_code: bool) -> Callable[[], nn.Module]:
    spec = sequential.validate_spec(architecture)
    return lambda: sequential.make(spec)


FACTORIES = {"sequential": _sequential, "torchvision": _torchvision, "transformers": _transformers, "python": _python}


class _SkipRandomInit(torch.overrides.TorchFunctionMode):
    """Random initialisation as a no-op (the tensor left as allocated), for a module whose
    weights are about to be replaced: MPNet's 110 M parameters took 0.8 s to draw, of a 0.9 s
    build. Torch function modes are per thread, so other threads' modules are untouched."""

    SKIPPED = frozenset({"normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
                         "xavier_uniform_", "xavier_normal_", "orthogonal_", "bernoulli_", "exponential_"})  # fmt: skip

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")  # torch.nn.init passes it by name
        if getattr(func, "__name__", None) in self.SKIPPED and isinstance(target, torch.Tensor):
            return target
        return func(*args, **kwargs)


def _construct(make: Callable[[], nn.Module], device: str | torch.device, initialise: bool = True) -> nn.Module:
    try:
        with torch.device(device), contextlib.nullcontext() if initialise else _SkipRandomInit():
            module = make()
    except ArchitectureError:
        raise
    except BaseException as exc:  # a constructor's own error (bad kwargs, impossible sizes, a native panic): name it
        if passes_through(exc):
            raise
        raise ArchitectureError(f"the architecture cannot be built: {described(exc)}") from None
    if not isinstance(module, nn.Module):
        raise ArchitectureError(f"the architecture's factory returned {type(module).__name__}, not a torch.nn.Module")
    return module


def expected_tensors(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def fit(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]) -> None:
    """Raise ``ArchitectureError`` unless ``state`` has exactly the expected names and shapes."""
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != dict(expected):
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
        detail = "; ".join(
            f"{label} {show(keys[:8], 300)}{f' (and {len(keys) - 8} more)' if len(keys) > 8 else ''}"
            for label, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong))
            if keys
        )
        raise ArchitectureError(f"the tensors do not fit the architecture: {detail}")


def skeleton(architecture: Any, trust_code: bool = False) -> tuple[Callable[[], nn.Module], nn.Module]:
    """(a constructor, the module built on the ``meta`` device), parameter count checked, and a
    sequential one's activations."""
    make = FACTORIES[kind_of(architecture)](architecture, trust_code)
    meta = _construct(make, "meta")
    total = sum(math.prod(s) for s in expected_tensors(meta).values())
    if total > MAX_PARAMETERS:
        raise ArchitectureError(f"architecture has {total} parameters, over the limit of {MAX_PARAMETERS}")
    if kind_of(architecture) == "sequential":
        sequential.check_activations(architecture, meta)
    return make, meta


def build(
    architecture: Any,
    state: Mapping[str, torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
    *,
    trust_code: bool = False,
) -> nn.Module:
    """The module ``architecture`` describes, in ``eval()`` mode: untrained, or holding ``state``
    (whose tensors must have exactly the module's names and shapes, and become its parameters
    without a copy when they are already on ``device``)."""
    make, meta = skeleton(architecture, trust_code)
    if state is None:
        return _construct(make, device).eval()
    fit(state, expected_tensors(meta))
    state = {k: v.to(device) for k, v in state.items()}
    meta.load_state_dict(state, assign=True)
    if any(t.is_meta for t in (*meta.parameters(), *meta.buffers())):  # buffers kept out of state_dicts
        module = _construct(make, device, initialise=False)  # what it draws is replaced at once
        module.load_state_dict(state, assign=True)
        return module.eval()
    return meta.eval()


def fuse_batchnorm(module: nn.Module) -> nn.Module:
    """Folds each ``BatchNorm2d`` that directly follows a ``Conv2d`` in a ``Sequential`` (as
    torchvision's conv-norm-activation blocks are built) into the convolution, in place, for
    inference: the same function in one pass fewer (BatchNorm was 11% of MobileNetV2's serving
    profile). Leaves the rest of the module as it is."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if (
                isinstance(conv, nn.Conv2d)
                and type(bn) is nn.BatchNorm2d
                and bn.running_mean is not None
                and bn.num_features == conv.out_channels
                and not (conv.training or bn.training)
            ):
                seq._modules[a], seq._modules[b] = fuse_conv_bn_eval(conv, bn), nn.Identity()
    return module


def trim_state(
    architecture: Any, state: Mapping[str, torch.Tensor], trust_code: bool = False
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` without the tensors the module keeps out of its state_dict (e.g. transformers'
    ``position_ids`` in files saved by older versions): (the kept tensors, the dropped names)."""
    _, meta = skeleton(architecture, trust_code)
    names = set(meta.state_dict())
    buffers = {n for n, _ in meta.named_buffers()} - names
    dropped = sorted(k for k in state if k in buffers)
    return {k: v for k, v in state.items() if k not in buffers}, dropped
