"""jpegweights codec: PyTorch state_dicts as JPEG-coded tiles in a safetensors container.

>>> from jpegweights.codec import EncodeConfig, encode, decode
>>> data = encode(model.state_dict(), EncodeConfig(quality=20))
>>> model.load_state_dict(decode(data, device="cpu"))

No HTTP here: ``service`` and ``client`` build on this package.
"""

from .allocate import Allocation, allocate
from .config import EncodeConfig
from .core import FORMAT_VERSION, decode, encode, load_file, load_manifest, load_package, save_file, snr_db, summarize
from .errors import (
    ChecksumError,
    CodecError,
    ConfigError,
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

__all__ = [
    "Allocation", "ChecksumError", "CodecError", "ConfigError", "EncodeConfig", "FORMAT_VERSION", "FormatError",
    "HeaderTooLargeError", "ImageTooLargeError", "InvalidTensorError", "JpegDecodeError", "ManifestError",
    "TargetError", "TruncatedError", "VersionError", "allocate", "decode", "encode", "load_file", "load_manifest",
    "load_package", "save_file", "snr_db", "summarize",
]  # fmt: skip
