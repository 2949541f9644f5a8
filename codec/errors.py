"""The codec's exceptions: one tree, each naming what was wrong and where.

    CodecError
    ├── ConfigError          bad encode settings (also a ValueError)
    ├── InvalidTensorError   NaN/Inf or an unsupported dtype in the input
    ├── FormatError          the container is not a valid .jpw file
    │   ├── TruncatedError       fewer bytes than the header promises
    │   ├── HeaderTooLargeError  header over the size limit
    │   ├── VersionError         unknown format version
    │   └── ManifestError        manifest disagrees with itself or the data
    ├── JpegDecodeError      a JPEG stream fails to decode
    │   └── ImageTooLargeError   a JPEG header claims an image over the limits
    └── ArchitectureError    the declared architecture cannot be built
"""

from __future__ import annotations


class CodecError(Exception):
    """Base of every error the codec raises. ``tensor`` names the tensor involved, if any."""

    def __init__(self, message: str, *, tensor: str | None = None):
        self.tensor = tensor
        super().__init__(f"tensor {tensor!r}: {message}" if tensor else message)


class ConfigError(CodecError, ValueError):
    pass


class InvalidTensorError(CodecError):
    pass


class FormatError(CodecError):
    pass


class TruncatedError(FormatError):
    pass


class HeaderTooLargeError(FormatError):
    pass


class VersionError(FormatError):
    pass


class ManifestError(FormatError):
    pass


class JpegDecodeError(CodecError):
    pass


class ImageTooLargeError(JpegDecodeError):
    pass


class ArchitectureError(CodecError):
    pass
