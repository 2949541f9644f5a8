"""``raw``: tensors in, tensors out, for any model: ``module(input)``, nothing else.

Handler config: ``{"input_shape": [...]}``, one sample's shape (a ``sequential`` architecture's
own ``input_shape`` when left out). Values must be finite; the answer is ``{"outputs": ...}``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from . import arrays
from .base import Batch, Handler, Limits, Request, Signature, TensorSpec, check_sample_shape, config_value
from .errors import HandlerConfigError, RequestError


class Raw(Handler):
    name = "raw"

    def configure(self) -> None:
        shape = config_value(self.config, "input_shape", list, self.architecture.get("input_shape"))
        if not (
            isinstance(shape, list)
            and 0 < len(shape) <= 8
            and all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 1 << 20 for d in shape)
        ):
            raise HandlerConfigError(f"the raw handler needs an input_shape (a list of positive ints), got {shape!r}")
        self.input_shape = tuple(shape)
        check_sample_shape(self.input_shape, "the raw handler's input_shape")

    def example(self) -> Request:
        return Request(inputs=np.zeros((1, *self.input_shape), dtype=np.float32))

    def decode_request(self, request: Request, limits: Limits = Limits()) -> Batch:
        if (
            request.inputs is None
            or request.images is not None
            or request.text is not None
            or request.pairs is not None
        ):
            raise RequestError("this model takes raw inputs (arrays of numbers) only")
        return {"input": arrays.samples(request.inputs, self.input_shape, limits.max_samples)}

    def predict(self, batch: Batch) -> Batch:
        out = self.forward(batch)
        if not isinstance(out, torch.Tensor):
            out = out[0]
        return {"output": out.float()}

    def measure(self, outputs: Batch) -> Signature:
        self.output_shape = tuple(outputs["output"].shape[1:])
        return Signature(
            inputs=(TensorSpec("input", "FP32", (-1, *self.input_shape), "inputs"),),
            outputs=(TensorSpec("output", "FP32", (-1, *self.output_shape)),),
        )

    def encode_response(self, outputs: Batch, request: Request) -> dict[str, Any]:
        return {"outputs": outputs["output"].tolist()}

    def describe(self) -> dict[str, Any]:
        return {"input_shape": list(self.input_shape), "output_shape": list(self.output_shape)}
