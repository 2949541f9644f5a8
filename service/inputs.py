"""Request bodies to input tensors, with errors that say which field is wrong and why.

Samples are raw values in the model's declared range (pixels 0..255 for the MNIST models);
the server applies the model's own preprocessing. Image models accept each sample either in
the declared shape (e.g. ``[1, 28, 28]``), without its leading 1 (``28×28`` nested lists), or
flattened (784 numbers).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from typing import Any

import numpy as np
import torch


class InputError(ValueError):
    """A bad request body. ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422):
        self.status = status
        super().__init__(message)


MAX_INT_DIGITS = 30  # no sample value or shape needs more; numpy cannot hold more than 20


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise InputError(f"an integer of {len(text)} digits in the body (at most {MAX_INT_DIGITS})", 400)
    return int(text)


def parse_json(body: bytes) -> Any:
    """The request body as JSON, refusing what would otherwise crash later: integers too long
    for numpy (or for Python's own 4,300-digit limit) and nesting deeper than the parser's stack."""
    try:
        return json.loads(body, parse_int=_bounded_int)
    except RecursionError:
        raise InputError("body is nested too deeply", 400) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"body is not valid JSON: {exc}", 400) from exc


def accepted_shapes(input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    shapes = [input_shape, (math.prod(input_shape),)]
    if len(input_shape) > 1 and input_shape[0] == 1:
        shapes.insert(1, input_shape[1:])
    return list(dict.fromkeys(shapes))


def _check_values(x: np.ndarray, field: str) -> None:
    if not np.isfinite(x).all():
        bad = int(np.argwhere(~np.isfinite(x.reshape(len(x), -1)))[0][0])
        raise InputError(f"{field}[{bad}] contains NaN or Infinity")
    flat = x.reshape(len(x), -1)
    out = (flat < 0) | (flat > 255)
    if out.any():
        bad = int(np.argwhere(out)[0][0])
        raise InputError(f"{field}[{bad}] has values outside 0..255 (min {flat[bad].min():g}, max {flat[bad].max():g})")


def samples_to_tensor(samples: Any, input_shape: tuple[int, ...], max_samples: int, field: str = "inputs") -> torch.Tensor:
    """A JSON list of samples -> (n, *input_shape) float32."""
    if not isinstance(samples, list) or not samples:
        raise InputError(f"{field} must be a non-empty list of samples")
    if len(samples) > max_samples:
        raise InputError(f"{field} has {len(samples)} samples; the limit is {max_samples} per request", 413)
    try:
        x = np.asarray(samples, dtype=np.float32)
    except (ValueError, TypeError):
        for i, s in enumerate(samples):  # find the culprit for the message
            try:
                np.asarray(s, dtype=np.float32)
            except (ValueError, TypeError):
                raise InputError(f"{field}[{i}] is not a rectangular array of numbers") from None
        raise InputError(f"{field}: samples have different shapes") from None
    shapes = accepted_shapes(input_shape)
    if x.shape[1:] not in shapes:
        want = " or ".join("x".join(map(str, s)) for s in shapes)
        got = "x".join(map(str, x.shape[1:])) or "a scalar"
        raise InputError(f"{field}: each sample must be {want}, got {got}")
    _check_values(x, field)
    return torch.from_numpy(x.reshape(len(x), *input_shape))


def images_to_tensor(images: Any, input_shape: tuple[int, ...], max_samples: int, max_pixels: int) -> torch.Tensor:
    """Base64 PNG/JPEG strings -> (n, *input_shape): grayscale, resized to the input size."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(images, list) or not images:
        raise InputError("images must be a non-empty list of base64-encoded PNG or JPEG strings")
    if len(images) > max_samples:
        raise InputError(f"images has {len(images)} entries; the limit is {max_samples} per request", 413)
    if len(input_shape) < 2:
        raise InputError("this model takes no images; send 'inputs'")
    height, width = input_shape[-2:]
    out = np.empty((len(images), height, width), dtype=np.float32)
    for i, item in enumerate(images):
        if not isinstance(item, str):
            raise InputError(f"images[{i}] must be a base64 string")
        try:
            raw = base64.b64decode(item.split(",", 1)[-1] if item.startswith("data:") else item, validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"images[{i}] is not valid base64") from None
        try:
            with Image.open(io.BytesIO(raw)) as img:
                if img.format not in ("PNG", "JPEG"):
                    raise InputError(f"images[{i}] is {img.format}, expected PNG or JPEG")
                if img.width * img.height > max_pixels:
                    raise InputError(f"images[{i}] is {img.width}x{img.height}, over the {max_pixels}-pixel limit", 413)
                gray = img.convert("L")
                if gray.size != (width, height):
                    gray = gray.resize((width, height), Image.BILINEAR)
                out[i] = np.asarray(gray, dtype=np.float32)
        except InputError:
            raise
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:  # ValueError: oversized zTXt/iCCP chunks
            raise InputError(f"images[{i}] is not a readable PNG or JPEG image ({exc})") from None
    return torch.from_numpy(out.reshape(len(images), *input_shape))


def predict_request(body: Any, input_shape: tuple[int, ...], max_samples: int, max_pixels: int) -> torch.Tensor:
    """A validated ``schemas.PredictRequest`` -> (n, *input_shape) float32."""
    if body.images is not None:
        return images_to_tensor(body.images, input_shape, max_samples, max_pixels)
    return samples_to_tensor(body.inputs, input_shape, max_samples)


def v2_request(body: Any, input_shape: tuple[int, ...], max_samples: int) -> tuple[torch.Tensor, list[str] | None, Any]:
    """A validated ``schemas.V2InferRequest`` -> (inputs, requested output names or None, id)."""
    t = body.inputs[0]
    shape = t.shape
    n = shape[0]
    if n > max_samples:
        raise InputError(f"batch of {n} exceeds the limit of {max_samples} per request", 413)
    if tuple(shape[1:]) not in accepted_shapes(input_shape):
        want = " or ".join(str([-1, *s]) for s in accepted_shapes(input_shape))
        raise InputError(f"input shape {shape} does not fit the model; expected {want}", 400)
    try:
        x = np.asarray(t.data, dtype=np.float32).reshape(-1)
    except (ValueError, TypeError):
        raise InputError("input data must be numbers (flat or nested in row-major order)", 400) from None
    if x.size != math.prod(shape):
        raise InputError(f"input data has {x.size} values, shape {shape} needs {math.prod(shape)}", 400)
    x = x.reshape(n, *input_shape)
    try:
        _check_values(x, "input data sample")
    except InputError as exc:
        raise InputError(str(exc), 400) from None
    names = None if body.outputs is None else [o.name for o in body.outputs]
    return torch.from_numpy(x), names, body.id
