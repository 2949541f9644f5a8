"""Handlers: how a package becomes a servable model, the same in the server, client and CLI.

>>> from jpegweights.handlers import load, Request
>>> handler = load(manifest, state_dict)                       # builds the module, runs it once
>>> handler.encode_response(handler.run(handler.decode_request(Request(images=[data]))), request)

A package's manifest says which handler serves it:

    "handler": {"name": "image-classification", "config": {...}}   a built-in (see BUILTINS)
    "handler": {"name": "my-handler", "config": {...}}             an installed entry point in
                                                                   the group ``jpegweights.handlers``
    "handler": {"class": "package.module:MyHandler", "config": {...}}   code named by the package:
                                                                   loaded only with trust_code=True

With no ``handler``, a ``sequential`` architecture of image shape ([1 or 3, h, w]) is served by
``image-classification`` with its own preprocessing (the MNIST models), any other by ``raw``.

The format core (``codec``) never builds modules: it hands back tensors and the manifest,
whose ``architecture`` and ``handler`` it treats as opaque JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from jpegweights.compressed import (
    POLICIES as COMPRESSED_DOMAIN,
    CompressedConv1x1,
    CompressedLinear,
    decompress,
    resident_bytes,
)

from .architectures import build, fit, kind_of, skeleton, trim_state
from .base import Batch, Handler, Limits, Request, Signature, TensorSpec, collate, rows, split
from .compressed import compress
from .errors import (
    ArchitectureError,
    CalibrationError,
    HandlerConfigError,
    HandlerError,
    RequestError,
    RequestTooLarge,
    UntrustedCodeError,
    described,
    passes_through,
    show,
)
from .image import ImageClassification
from .raw import Raw
from .runtimes import RUNTIMES, Choice, accelerate
from .sequential import preprocess, validate_spec
from .text import TextEmbedding

BUILTINS: dict[str, type[Handler]] = {h.name: h for h in (ImageClassification, TextEmbedding, Raw)}
ENTRY_POINT_GROUP = "jpegweights.handlers"

__all__ = [
    "ArchitectureError", "BUILTINS", "Batch", "COMPRESSED_DOMAIN", "CalibrationError", "Choice", "CompressedConv1x1",
    "CompressedLinear", "Handler", "HandlerConfigError", "HandlerError", "Limits", "Request", "RequestError",
    "RUNTIMES", "RequestTooLarge", "Signature", "TensorSpec", "UntrustedCodeError", "accelerate", "build", "collate",
    "compress", "create",
    "decompress", "fit", "kind_of", "load", "preprocess", "resident_bytes", "rows", "skeleton", "split", "trim_state",
    "validate_spec",
]  # fmt: skip


def _implicit(architecture: Any) -> dict[str, Any]:
    """The handler of a package that declares none."""
    if kind_of(architecture) == "sequential":
        spec = validate_spec(architecture)
        shape, pre = spec["input_shape"], spec.get("preprocess", {})
        if len(shape) == 3 and shape[0] in (1, 3):
            config = {"input_shape": shape, "resize": None, "scale": pre.get("scale", 1.0), "probabilities": True}
            config.update({k: pre[k] for k in ("mean", "std") if k in pre})
            return {"name": "image-classification", "config": config}
        return {"name": "raw", "config": {}}
    raise HandlerConfigError("the package declares no handler; import it with `jpegweights import` to add one")


def _entry_point(name: str) -> type[Handler] | None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.load()
    return None


def handler_class(spec: Any, trust_code: bool = False) -> type[Handler]:
    """The class a manifest's ``handler`` names (built-ins, installed entry points, and with
    ``trust_code`` an import path)."""
    from .architectures import import_object

    if not isinstance(spec, dict) or set(spec) - {"name", "class", "config"} or ("name" in spec) == ("class" in spec):
        raise HandlerConfigError(f"handler must be {{'name' or 'class', 'config'}}, got {show(spec, 200)}")
    if "class" in spec:
        if not trust_code:
            raise UntrustedCodeError(
                f"the package's handler is code ({show(spec['class'])}); load it from a trusted store "
                "(trust_code=True) only if you trust its author"
            )
        cls = import_object(spec["class"])
    else:
        name = spec["name"]
        cls = BUILTINS.get(name) if isinstance(name, str) else None
        if cls is None and isinstance(name, str):
            cls = _entry_point(name)
        if cls is None:
            raise HandlerConfigError(
                f"unknown handler {show(name)} "
                f"(built-in: {', '.join(BUILTINS)}; or an installed '{ENTRY_POINT_GROUP}' entry point)"
            )
    if not (isinstance(cls, type) and issubclass(cls, Handler)):
        raise HandlerConfigError(
            f"handler {show(spec.get('class') or spec.get('name'))} is not a jpegweights.handlers.Handler subclass"
        )
    return cls


def create(manifest: Mapping[str, Any], trust_code: bool = False) -> Handler:
    """The package's handler, configured but not set up (no module yet)."""
    architecture = manifest.get("architecture")
    if architecture is None:
        raise ArchitectureError(
            "the package declares no architecture, so it cannot be built; use its tensors with your own module"
        )
    kind_of(architecture)
    spec = manifest.get("handler") or _implicit(architecture)
    return handler_class(spec, trust_code)(spec.get("config", {}), architecture)


def load(
    manifest: Mapping[str, Any],
    state: Mapping[str, torch.Tensor],
    device: str | torch.device = "cpu",
    *,
    trust_code: bool = False,
    min_rows: int = 1,
) -> Handler:
    """The package's handler with its module built from ``state`` and run once on an example.
    Any problem raises a ``HandlerError`` naming it, whatever the libraries underneath raised
    (a native panic included: see ``errors.passes_through``)."""
    try:
        handler = create(manifest, trust_code)
    except HandlerError:
        raise
    except BaseException as exc:  # a handler class's own configure(), an entry point that fails to import
        if passes_through(exc):
            raise
        raise HandlerConfigError(f"the package's handler cannot be configured: {described(exc)}") from None
    handler.min_rows = min_rows
    try:
        return handler.setup(state, device, trust_code=trust_code)
    except HandlerError:
        raise
    except BaseException as exc:  # the module cannot run its own example
        if passes_through(exc):
            raise
        raise ArchitectureError(f"the model does not run on its handler's example input: {described(exc)}") from None
