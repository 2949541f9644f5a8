"""8-bit grayscale JPEG: quantization tables, encoding (Pillow), header checks, decoding (simplejpeg
on CPU, torchvision's nvJPEG on CUDA).

Tables are always computed here and passed to the encoder explicitly, so the quality scale is
ours (the IJG formula) and the bytes do not depend on an encoder's defaults. Decoders need
nothing special: the table travels inside each JPEG.
"""

from __future__ import annotations

import contextlib
import io
import struct
import threading
import warnings
from collections.abc import Iterator

import numpy as np
import torch

from .errors import CodecError, ImageTooLargeError, JpegDecodeError

# torchvision 0.29 deprecates its image codecs in favour of TorchCodec; decode_jpeg still works
# and is the documented GPU path (nvJPEG). Silence the notice, which fires on every call.
warnings.filterwarnings(
    "ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning
)

_MAXBLOCK_LOCK = threading.Lock()
MAX_SIDE = 65500  # libjpeg's JPEG_MAX_DIMENSION (the format itself allows 65,535)

# ITU T.81 Annex K.1 luminance table, natural (row-major) order.
STANDARD_LUMA = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip
QTABLES = ("standard", "flat")
FLAT_BASE = 16  # the flat table equals the standard table's DC entry at every frequency


def qtable(kind: str, quality: int) -> list[int]:
    """The 64 baseline (1..255) quantizer steps for ``kind`` at ``quality`` 1..100 (IJG scaling)."""
    if kind not in QTABLES:
        raise ValueError(f"qtable must be one of {QTABLES}, got {kind!r}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    base = STANDARD_LUMA if kind == "standard" else (FLAT_BASE,) * 64
    return [min(255, max(1, (b * scale + 50) // 100)) for b in base]


def max_stream_bytes(height: int, width: int) -> int:
    """An upper bound on a baseline 8-bit grayscale JPEG's size.

    Per 8x8 block (the image padded to whole blocks): a DC code of at most 16 + 11 bits and 63
    AC codes of at most 16 + 10 bits, 208 bytes; byte stuffing can double that; plus headers
    and tables.
    """
    blocks = -(-height // 8) * -(-width // 8)
    return blocks * 2 * 208 + 4096


@contextlib.contextmanager
def pillow_buffer(height: int, width: int) -> Iterator[None]:
    """Let Pillow write a whole JPEG of ``height x width`` at once, whatever its content.

    With ``optimize=True`` (or ``progressive``) libjpeg writes the whole stream in one go, into
    a buffer that Pillow sizes as one byte per pixel (at least MAXBLOCK). Noisy or short, padded
    images (2x15428 at high quality) code to more than that and fail with "broken data stream".
    Pillow takes the larger of its own size and MAXBLOCK, so MAXBLOCK is raised to the format's
    worst case for the duration (under a lock: it is a module global).
    """
    from PIL import ImageFile

    with _MAXBLOCK_LOCK:
        saved = ImageFile.MAXBLOCK
        ImageFile.MAXBLOCK = max(saved, max_stream_bytes(height, width))
        try:
            yield
        finally:
            ImageFile.MAXBLOCK = saved


def encode(image: np.ndarray, table: list[int], optimize: bool = True) -> bytes:
    """(H, W) uint8 -> baseline JPEG bytes with optimized Huffman tables (``optimize=False``:
    the standard ones, faster, and the same pixels)."""
    from PIL import Image

    buf = io.BytesIO()
    try:
        with pillow_buffer(*image.shape) if optimize else contextlib.nullcontext():
            Image.fromarray(image, mode="L").save(buf, format="JPEG", qtables=[table], optimize=optimize)
    except (OSError, ValueError) as exc:
        raise CodecError(f"JPEG encoder failed on a {image.shape[0]}x{image.shape[1]} atlas: {exc}") from exc
    return buf.getvalue()


def frame(data: bytes | memoryview) -> tuple[int, int, int, int, int]:
    """(SOF marker, precision, height, width, components) from a JPEG's frame header, without
    decoding any pixels. Raises ``JpegDecodeError`` when the stream has no readable frame header.
    """
    view = memoryview(data)
    if len(view) < 4 or view[0] != 0xFF or view[1] != 0xD8:
        raise JpegDecodeError("not a JPEG stream (no SOI marker)")
    pos = 2
    while pos + 4 <= len(view):
        if view[pos] != 0xFF:
            raise JpegDecodeError(f"corrupt JPEG: expected a marker at byte {pos}")
        marker = view[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack(">H", view[pos + 2 : pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 10 > len(view):
                break
            precision, height, width = struct.unpack(">BHH", view[pos + 4 : pos + 9])
            return marker, precision, height, width, view[pos + 9]
        if marker in (0xD9, 0xDA):  # EOI or start of scan before any frame header
            break
        pos += 2 + length
    raise JpegDecodeError("corrupt JPEG: no frame header found")


def check_dimensions(data: bytes | memoryview, height: int, width: int) -> None:
    """Refuse a stream that is not baseline 8-bit grayscale of the manifest's size."""
    marker, precision, h, w, components = frame(data)
    if (h, w) != (height, width):
        raise ImageTooLargeError(f"JPEG header claims {h}x{w} pixels, manifest says {height}x{width}")
    if marker != 0xC0 or precision != 8:
        raise JpegDecodeError(f"JPEG is not baseline 8-bit (SOF marker 0x{marker:02X}, precision {precision})")
    if components != 1:
        raise JpegDecodeError(f"JPEG has {components} components, expected 1 (grayscale)")


def decode(data: torch.Tensor) -> torch.Tensor:
    """A uint8 tensor holding one JPEG -> (H, W) uint8 on the CPU.

    simplejpeg (libjpeg-turbo, accurate integer IDCT, the GIL released while it decodes), not
    torchvision: importing torchvision costs a cold process about 1.3 s, more than a small
    model takes to download and decode, and Pillow decodes 20% slower here. The manifest checks
    have already bounded the image's size and checked its frame header.
    """
    import simplejpeg

    try:
        pixels = simplejpeg.decode_jpeg(data.numpy(), colorspace="GRAY", fastdct=False, fastupsample=False)
    except (ValueError, OSError) as exc:
        raise JpegDecodeError(f"JPEG failed to decode: {exc}") from exc
    return torch.from_numpy(pixels[:, :, 0])  # (H, W, 1) -> (H, W) uint8


def decode_batch(streams: list[torch.Tensor], device: str | torch.device) -> list[torch.Tensor]:
    """Many JPEGs in one torchvision call (nvJPEG batches them on CUDA) -> list of (H, W) uint8.
    torchvision is imported here only, for the GPU path."""
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return [img[0] for img in decode_jpeg(streams, mode=ImageReadMode.GRAY, device=device)]
    except RuntimeError as exc:
        raise JpegDecodeError(f"JPEG failed to decode: {exc}") from exc
