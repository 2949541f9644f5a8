"""jpegweights codec: PyTorch state_dicts as JPEG-coded tiles in a safetensors container.

>>> from jpegweights.codec import EncodeConfig, encode, decode
>>> data = encode(model.state_dict(), EncodeConfig(quality=90))     # or EncodeConfig.preset("seed")
>>> model.load_state_dict(decode(data, device="cpu"))

Inside: ``config`` (settings, resolved per tensor), ``policy`` (which coding for each tensor),
``codings`` (raw, int8, jpeg: one module each, behind a registry), ``encoding``/``decoding``
(whole packages), ``streaming`` (packages decoded as their bytes arrive), ``fileio`` (files),
``container`` and ``manifest`` (the format, checked). No HTTP here: ``service`` and ``client`` build on this package.
"""

from .allocate import Allocation, allocate
from .config import PRESETS, EncodeConfig
from .container import FORMAT_VERSION
from .decoding import decode, decode_package
from .encoding import encode
from .errors import (
    ChecksumError,
    CodecError,
    ConfigError,
    ExpansionError,
    FormatError,
    HeaderTooLargeError,
    ImageTooLargeError,
    InvalidTensorError,
    JpegDecodeError,
    ManifestError,
    TargetError,
    TruncatedError,
    VersionError,
)
from .fileio import load_file, load_package, save_file
from .policy import snr_db
from .streaming import StreamDecoder
from .summary import load_manifest, summarize

__all__ = [
    "Allocation", "ChecksumError", "CodecError", "ConfigError", "EncodeConfig", "ExpansionError", "FORMAT_VERSION",
    "FormatError", "HeaderTooLargeError", "ImageTooLargeError", "InvalidTensorError", "JpegDecodeError",
    "ManifestError", "PRESETS", "StreamDecoder", "TargetError", "TruncatedError", "VersionError", "allocate", "decode",
    "decode_package", "encode", "load_file", "load_manifest", "load_package", "save_file", "snr_db", "summarize",
]  # fmt: skip
