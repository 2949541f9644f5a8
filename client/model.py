"""A model rebuilt from a package: raw inputs in (pixels 0..255), logits out."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from jpegweights import codec
from .errors import CodecError


class PackagedModel(nn.Module):
    """The package's declared architecture with its preprocessing in front.

    >>> model = client.load("mnist-mlp")
    >>> model(torch.zeros(1, 1, 28, 28)).argmax(1)     # what /predict answers for that input
    """

    def __init__(self, spec: dict[str, Any], net: nn.Sequential):
        super().__init__()
        self.spec, self.net = spec, net

    @classmethod
    def build(cls, manifest: dict[str, Any], state: dict[str, torch.Tensor], device: str | torch.device = "cpu") -> PackagedModel:
        spec = manifest.get("architecture")
        if spec is None:
            raise CodecError("the package declares no architecture; use state_dict() with your own module")
        return cls(spec, codec.build_module(spec, state)).to(device).eval()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.spec["input_shape"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, *input_shape) or (n, prod(input_shape)) raw values -> (n, classes) logits."""
        x = x.reshape(len(x), *self.input_shape).to(next(self.net.parameters()).device)
        return self.net(codec.preprocess(self.spec, x))

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self(x).argmax(1)
