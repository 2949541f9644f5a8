"""``image-classification``: images (or raw pixels) in, top-k labels with names and scores out.

Handler config (all travels in the package):

    {"input_shape": [3, 224, 224],    channels (1: grayscale, 3: RGB), height, width
     "resize": 256,                   shorter side resized to this, then centre-cropped
                                      (null: resized straight to height x width)
     "scale": 0.00392156862745098,    pixels 0..255 times scale, then (x - mean) / std per channel
     "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
     "labels": ["tench", ...],        one name per class (optional)
     "top_k": 5, "probabilities": false}

Images are converted to the model's channels as any image classifier does (a grey photo is
fed to an RGB model as three equal channels); raw pixel arrays must already have them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from . import arrays
from .base import Batch, Handler, Limits, Request, Signature, TensorSpec, check_sample_shape, config_value, option
from .errors import HandlerConfigError, RequestError, RequestTooLarge

FORMATS = ("JPEG", "PNG", "WEBP")
READABLE = "a readable JPEG, PNG or WebP image"
_DECODE_ERRORS = (OSError, ValueError, SyntaxError)  # what PIL raises for bad data (ValueError: big PNG text chunks)
MAX_JPEG_SCANS = 100  # libjpeg's progressive JPEGs have about 10; each scan is a pass over the whole image


def open_image(data: bytes, index: int, max_pixels: int) -> Any:
    """Encoded bytes -> a PIL image whose pixels are not decoded yet, refusing other formats,
    oversized images and JPEGs of more scans than ``MAX_JPEG_SCANS`` from their headers alone."""
    from PIL import Image, UnidentifiedImageError

    where = f"images[{index}]"
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise RequestError(f"{where} is not {READABLE} (no known image format)") from None
    except (*_DECODE_ERRORS, Image.DecompressionBombError) as exc:
        raise RequestError(f"{where} is not {READABLE} ({str(exc)[:120]})") from None
    if img.format not in FORMATS:
        raise RequestError(f"{where} is {img.format}; send {READABLE}")
    if img.width * img.height > max_pixels:
        raise RequestTooLarge(f"{where} is {img.width}x{img.height}, over the {max_pixels}-pixel limit")
    # Every 0xFFDA in a JPEG starts a scan (entropy-coded data escapes 0xFF as 0xFF00), or lies in
    # a metadata segment and overcounts: a hostile file of 200,000 empty scans decoded for minutes.
    if img.format == "JPEG" and (scans := data.count(b"\xff\xda")) > MAX_JPEG_SCANS:
        raise RequestTooLarge(f"{where} is a JPEG of {scans} scans; the limit is {MAX_JPEG_SCANS}")
    return img


def load_image(img: Any, index: int) -> Any:
    """``open_image``'s image with its pixels decoded."""
    try:
        img.load()
        return img
    except _DECODE_ERRORS as exc:
        raise RequestError(f"images[{index}] is not {READABLE} ({str(exc)[:120]})") from None


def open_images(images: Sequence[bytes], limits: Limits) -> list[Any]:
    """A request's images decoded, once all of their headers are read and within the limits:
    a request of many large images is refused before any pixel is decoded."""
    arrays.check_count(len(images), limits.max_samples, "images")
    opened = [open_image(data, i, limits.max_pixels) for i, data in enumerate(images)]
    total = sum(img.width * img.height for img in opened)
    if total > limits.max_request_pixels:
        raise RequestTooLarge(
            f"the request's {len(opened)} images hold {total} pixels; the limit is {limits.max_request_pixels}"
        )
    return [load_image(img, i) for i, img in enumerate(opened)]


def pixels(img: Any, shape: tuple[int, int, int], resize: int | None) -> np.ndarray:
    """A PIL image -> uint8 (channels, height, width), as torchvision's ``Resize(resize)`` +
    ``CenterCrop`` (or a plain resize to the input size when ``resize`` is None)."""
    from PIL import Image

    channels, height, width = shape
    img = img.convert("L" if channels == 1 else "RGB")
    if resize is None:
        if img.size != (width, height):
            img = img.resize((width, height), Image.BILINEAR)
    else:
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        size = (resize, int(resize * long / short))
        img = img.resize(size if w <= h else size[::-1], Image.BILINEAR)
        w, h = img.size
        if w < width or h < height:
            img = img.resize((max(w, width), max(h, height)), Image.BILINEAR)
            w, h = img.size
        top, left = int(round((h - height) / 2.0)), int(round((w - width) / 2.0))
        img = img.crop((left, top, left + width, top + height))
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _floats(config: dict[str, Any], name: str, n: int) -> list[float] | None:
    values = config_value(config, name, list, None)
    if values is None:
        return None
    if (
        len(values) not in (1, n)
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        or (name == "std" and 0 in values)
    ):
        raise HandlerConfigError(
            f"handler config {name!r} must be 1 or {n} finite numbers{' (no zero)' if name == 'std' else ''}"
        )
    return [float(v) for v in values]


class ImageClassification(Handler):
    name = "image-classification"
    options = frozenset({"top_k", "probabilities"})

    def configure(self) -> None:
        c = self.config
        shape = config_value(c, "input_shape", list)
        if (
            len(shape) != 3
            or shape[0] not in (1, 3)
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 4096 for d in shape)
        ):
            raise HandlerConfigError(
                f"image-classification input_shape must be [1 or 3, height, width] (sides up to 4096), got {shape}"
            )
        self.input_shape = tuple(shape)
        check_sample_shape(self.input_shape, "image-classification input_shape")
        self.resize = config_value(c, "resize", (int, type(None)), None)
        if self.resize is not None and not 0 < self.resize <= 8192:
            raise HandlerConfigError("handler config 'resize' must be 1..8192 or null")
        self.scale = float(config_value(c, "scale", (int, float), 1 / 255))
        if not math.isfinite(self.scale):
            raise HandlerConfigError("handler config 'scale' must be finite")
        self.mean, self.std = _floats(c, "mean", shape[0]), _floats(c, "std", shape[0])
        # x * scale, then (x - mean) / std, as one multiply-add: x * gain + shift
        mean, std = torch.tensor(self.mean or [0.0]), torch.tensor(self.std or [1.0])
        self._gain, self._shift = (self.scale / std).view(1, -1, 1, 1), (-mean / std).view(1, -1, 1, 1)
        self.labels = config_value(c, "labels", list, None)
        if self.labels is not None and not all(isinstance(x, str) and len(x) <= 200 for x in self.labels):
            raise HandlerConfigError(
                "handler config 'labels' must be a list of names (strings of up to 200 characters)"
            )
        self.top_k = config_value(c, "top_k", int, 5)
        self.probabilities = config_value(c, "probabilities", bool, False)
        self.channels_last = False  # set by setup

    def example(self) -> Request:
        return Request(inputs=np.zeros((1, *self.input_shape), dtype=np.float32))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels 0..255 -> the model's input, on the whole batch in one op (torch on tiny
        per-request tensors in request threads contended with the forward pass)."""
        return torch.addcmul(self._shift, x, self._gain)

    def setup(self, state: Any, device: Any = "cpu", *, trust_code: bool = False) -> ImageClassification:
        self._gain, self._shift = self._gain.to(device), self._shift.to(device)
        super().setup(state, device, trust_code=trust_code)
        # Convolutions run in channels-last layout: 1.6x MobileNetV2's images/s on a 2-core CPU
        # (69/s against 42/s at batch 1, 134/s against 83/s at 4), 1.3x the MNIST CNN's.
        self.channels_last = any(isinstance(m, torch.nn.Conv2d) for m in self.module.modules())
        if self.channels_last:
            self.module.to(memory_format=torch.channels_last)
        return self

    def forward(self, batch: Batch) -> torch.Tensor:
        x = self.normalize(batch["input"])
        if self.channels_last and self.runner is None:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self.call(x)
        return (
            logits if isinstance(logits, torch.Tensor) else logits[0]
        )  # e.g. a named tuple whose first field holds the logits

    def module_inputs(self) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, ...]], bool]:
        x = self.normalize(torch.rand(2, *self.input_shape, device=self.device) * 255)
        return {"input": x}, {"input": (0,)}, False

    def decode_request(self, request: Request, limits: Limits = Limits()) -> Batch:
        if request.text is not None or request.pairs is not None:
            raise RequestError("this model classifies images; send images or raw pixel inputs, not text")
        if request.images is not None:
            batch = np.stack(
                [pixels(img, self.input_shape, self.resize) for img in open_images(request.images, limits)]
            )
            x = torch.from_numpy(batch).float()
        elif request.inputs is not None:
            x = arrays.samples(request.inputs, self.input_shape, limits.max_samples, "inputs", (0, 255))
        else:
            raise RequestError("send images (encoded files) or inputs (pixels 0..255)")
        return {"input": x}  # pixels: normalized in forward, batched

    def predict(self, batch: Batch) -> Batch:
        probabilities = torch.softmax(self.forward(batch).float(), dim=1)
        return {"probabilities": probabilities, "predictions": probabilities.argmax(1)}

    def measure(self, outputs: Batch) -> Signature:
        classes = outputs["probabilities"].shape[1]
        if self.labels is not None and len(self.labels) != classes:
            raise HandlerConfigError(f"the handler has {len(self.labels)} labels for a model with {classes} classes")
        self.classes = classes
        c, h, w = self.input_shape
        return Signature(
            inputs=(
                TensorSpec("input", "FP32", (-1, c, h, w), "inputs"),
                TensorSpec("image", "BYTES", (-1,), "images"),
            ),
            outputs=(
                TensorSpec("probabilities", "FP32", (-1, classes)),
                TensorSpec("predictions", "INT64", (-1,)),
                TensorSpec("labels", "BYTES", (-1,)),
            ),
        )

    def label(self, i: int) -> str:
        return self.labels[i] if self.labels is not None else str(i)

    def encode_response(self, outputs: Batch, request: Request) -> dict[str, Any]:
        k = option(request, "top_k", int, self.top_k)
        if not 1 <= k <= self.classes:
            raise RequestError(f"top_k must be 1..{self.classes}")
        p = outputs["probabilities"]
        scores, index = p.topk(k, dim=1)
        answer: dict[str, Any] = {
            "predictions": outputs["predictions"].tolist(),
            "labels": [self.label(i) for i in outputs["predictions"].tolist()],
            "top_k": [
                [{"index": i, "label": self.label(i), "score": s} for i, s in zip(row_i, row_s)]
                for row_i, row_s in zip(index.tolist(), scores.tolist())
            ],
        }
        if option(request, "probabilities", bool, self.probabilities):
            answer["probabilities"] = p.tolist()
        return answer

    def output_arrays(self, outputs: Batch) -> dict[str, np.ndarray]:
        labels = np.array([self.label(i).encode() for i in outputs["predictions"].tolist()], dtype=object)
        return {
            "probabilities": outputs["probabilities"].numpy(),
            "predictions": outputs["predictions"].numpy(),
            "labels": labels,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "classes": self.classes,
            "input_shape": list(self.input_shape),
            "resize": self.resize,
            "labels": self.labels is not None,
            "top_k": self.top_k,
        }
