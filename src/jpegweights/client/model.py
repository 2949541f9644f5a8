"""A model rebuilt from a package, with its handler: the server's processing, run locally."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jpegweights import codec, handlers

from .errors import CodecError, ModelError

UNLIMITED = handlers.Limits(max_samples=1 << 62, max_pixels=1 << 62)  # local inputs are the user's own


class PackagedModel(nn.Module):
    """The package's module and handler. ``predict`` answers what ``/predict`` answers:

    >>> model = client.load("mobilenet_v2")
    >>> model.predict(["cat.jpg"])["labels"]            # image files (paths or bytes)
    >>> model.predict(torch.zeros(1, 1, 28, 28))         # raw inputs (pixels 0..255 for image models)
    >>> client.load("all-minilm-l6-v2").predict(["some text"])["embeddings"]

    ``model(x)`` is the module's own output for raw inputs (for image models: the logits,
    after the package's preprocessing).
    """

    def __init__(self, handler: handlers.Handler):
        super().__init__()
        self.handler, self.net = handler, handler.module
        self.compressed_domain: dict[str, Any] | None = None

    @classmethod
    def build(
        cls,
        manifest: dict[str, Any],
        state: dict[str, torch.Tensor],
        device: str | torch.device = "cpu",
        *,
        trust_code: bool = False,
        package: bytes | None = None,
        compressed_domain: str | None = None,
    ) -> PackagedModel:
        """Raises ``ModelError`` when the package cannot be built or run. With
        ``compressed_domain`` ("auto" or "all") and the ``package`` bytes, Linear and 1x1 conv
        layers compute from the weights' JPEG coefficients (``handlers.compress``: its report is
        ``model.compressed_domain``)."""
        try:
            handler = handlers.load(manifest, state, device, trust_code=trust_code)
            report = (
                None if compressed_domain is None else handlers.compress(handler, package, state, compressed_domain)
            )
        except handlers.HandlerError as exc:
            raise ModelError(str(exc)) from None
        except codec.CodecError as exc:
            raise CodecError(str(exc)) from exc
        model = cls(handler).eval()
        model.compressed_domain = report
        return model

    @classmethod
    def from_package(
        cls,
        data: bytes,
        device: str | torch.device = "cpu",
        *,
        trust_code: bool = False,
        compressed_domain: str | None = None,
        what: str = "package",
    ) -> PackagedModel:
        """Decode ``.jpw`` bytes and ``build``; a bad package raises ``CodecError`` naming ``what``."""
        try:
            state, manifest = codec.decode_package(data, device)
        except codec.CodecError as exc:
            raise CodecError(f"{what}: {exc}") from exc
        return cls.build(
            manifest, state, device, trust_code=trust_code, package=data, compressed_domain=compressed_domain
        )

    @property
    def resident_bytes(self) -> int:
        """Bytes the module's weights hold in memory, as ``/models`` reports a served model's
        (``resident_weight_bytes``): float32 tensors, or JPEG coefficients in the compressed domain."""
        return handlers.resident_bytes(self.net)

    @property
    def signature(self) -> handlers.Signature:
        return self.handler.signature

    def request(
        self, data: Any = None, *, pairs: Sequence[Sequence[str]] | None = None, **options: Any
    ) -> handlers.Request:
        """``data`` as the handler's ``Request``: strings are texts for text models and file
        paths for image models; bytes are encoded images; arrays and tensors are raw inputs."""
        if pairs is not None:
            return handlers.Request(pairs=pairs, options=options)
        if isinstance(data, (torch.Tensor,)) or hasattr(data, "__array__"):
            return handlers.Request(inputs=torch.as_tensor(data).detach().cpu().numpy(), options=options)
        items = list(data)
        if "text" in {s.source for s in self.signature.inputs}:
            return handlers.Request(text=items, options=options)
        if all(isinstance(i, (str, os.PathLike, bytes)) for i in items):
            return handlers.Request(
                images=[i if isinstance(i, bytes) else Path(i).read_bytes() for i in items], options=options
            )
        return handlers.Request(inputs=items, options=options)

    @torch.inference_mode()
    def predict(
        self, data: Any = None, *, pairs: Sequence[Sequence[str]] | None = None, **options: Any
    ) -> dict[str, Any]:
        """The handler's answer for ``data``; ``options`` as the server takes them (``top_k``...).
        Raises ``ModelError`` for inputs the model cannot take."""
        request = self.request(data, pairs=pairs, **options)
        try:
            return self.handler.encode_response(
                self.handler.run(self.handler.decode_request(request, UNLIMITED)), request
            )
        except handlers.RequestError as exc:
            raise ModelError(str(exc)) from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = self.handler.decode_request(
            handlers.Request(inputs=torch.as_tensor(x).detach().cpu().numpy()), UNLIMITED
        )
        if set(batch) != {"input"}:
            raise TypeError(f"{self.handler.name} models take more than one tensor: use predict()")
        return self.handler.forward({"input": batch["input"].to(self.handler.device)})
