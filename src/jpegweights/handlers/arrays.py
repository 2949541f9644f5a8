"""Raw arrays from requests (JSON lists or numpy) to tensors, with errors naming the field."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .errors import RequestError, RequestTooLarge


def accepted_shapes(input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """A sample may come in the declared shape, without a leading 1, or flattened."""
    shapes = [input_shape, (math.prod(input_shape),)]
    if len(input_shape) > 1 and input_shape[0] == 1:
        shapes.insert(1, input_shape[1:])
    return list(dict.fromkeys(shapes))


def check_count(n: int, max_samples: int, field: str) -> None:
    if n == 0:
        raise RequestError(f"{field} is empty")
    if n > max_samples:
        raise RequestTooLarge(f"{field} has {n} samples; the limit is {max_samples} per request")


def samples(
    values: Any,
    input_shape: tuple[int, ...],
    max_samples: int,
    field: str = "inputs",
    value_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """A list of samples (nested lists, or an array whose first axis is the sample) ->
    ``(n, *input_shape)`` float32; each value finite and within ``value_range``."""
    if isinstance(values, np.ndarray):
        x = values.astype(np.float32, copy=False)
        if x.ndim == 0:
            raise RequestError(f"{field} must be a list of samples")
    else:
        if not isinstance(values, list):
            raise RequestError(f"{field} must be a non-empty list of samples")
        check_count(len(values), max_samples, field)
        try:
            x = np.asarray(values, dtype=np.float32)
        except (ValueError, TypeError):
            for i, s in enumerate(values):  # find the culprit for the message
                try:
                    np.asarray(s, dtype=np.float32)
                except (ValueError, TypeError):
                    raise RequestError(f"{field}[{i}] is not a rectangular array of numbers") from None
            raise RequestError(f"{field}: samples have different shapes") from None
    check_count(len(x), max_samples, field)
    shapes = accepted_shapes(input_shape)
    if x.shape[1:] not in shapes:
        want = " or ".join("x".join(map(str, s)) for s in shapes)
        got = "x".join(map(str, x.shape[1:])) or "a scalar"
        raise RequestError(f"{field}: each sample must be {want}, got {got}")
    flat = x.reshape(len(x), -1)
    within = value_range is not None and value_range[0] <= flat.min() and flat.max() <= value_range[1]  # False with NaN
    if not within:  # find what is wrong, for the message
        if not np.isfinite(flat).all():
            bad = int(np.argwhere(~np.isfinite(flat))[0][0])
            raise RequestError(f"{field}[{bad}] contains NaN or Infinity")
        if value_range is not None:
            lo, hi = value_range
            bad = int(np.argwhere((flat < lo) | (flat > hi))[0][0])
            raise RequestError(
                f"{field}[{bad}] has values outside {lo:g}..{hi:g} (min {flat[bad].min():g}, max {flat[bad].max():g})"
            )
    return torch.from_numpy(np.ascontiguousarray(x.reshape(len(x), *input_shape)))
