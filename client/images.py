"""Image files to raw model inputs (grayscale, resized to the model's input size)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch


def load_images(paths: Sequence[str | os.PathLike], input_shape: Sequence[int]) -> torch.Tensor:
    """PNG/JPEG files -> (n, *input_shape) float32 in 0..255."""
    from PIL import Image, UnidentifiedImageError

    height, width = input_shape[-2:]
    out = []
    for path in paths:
        try:
            with Image.open(path) as img:
                gray = img.convert("L")
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"{path}: not a readable image ({exc})") from exc
        if gray.size != (width, height):
            gray = gray.resize((width, height), Image.BILINEAR)
        out.append(np.asarray(gray, dtype=np.float32))
    return torch.from_numpy(np.stack(out)).reshape(len(out), *input_shape)
