"""The codec's exceptions: one tree, each naming what was wrong and where.

    CodecError
    ├── ConfigError          bad encode settings (also a ValueError)
    │   └── TargetError          ``allocate``: no choice reaches the fidelity target; ``best``
    │                            is the least distortion it measured
    ├── InvalidTensorError   NaN/Inf or an unsupported dtype in the input
    ├── FormatError          the container is not a valid .jpw file
    │   ├── TruncatedError       fewer bytes than the header promises
    │   ├── HeaderTooLargeError  header over the size limit
    │   ├── VersionError         unknown format version
    │   ├── ChecksumError        the SHA-256 digest does not match (corrupt or altered)
    │   ├── ManifestError        manifest disagrees with itself or the data
    │   └── ExpansionError       the tensors would take far more bytes than the package brings
    ├── JpegDecodeError      a JPEG stream fails to decode
    │   └── ImageTooLargeError   a JPEG header claims an image over the limits
    └── DenseOnlyError       the compressed domain cannot take a tensor (it decodes; it stays dense)

Building a module from a package's ``architecture`` is not the codec's job: see
``jpegweights.handlers`` (and its ``ArchitectureError``).
"""

from __future__ import annotations


def show(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: values in messages come from untrusted files."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"<deeply nested {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class CodecError(Exception):
    """Base of every error the codec raises. ``tensor`` names the tensor involved, if any."""

    def __init__(self, message: str, *, tensor: str | None = None):
        self.tensor = tensor
        super().__init__(f"tensor {show(tensor, 200)}: {message}" if tensor else message)


class ConfigError(CodecError, ValueError):
    pass


class TargetError(ConfigError):
    """No allocation reaches the target; ``best`` is the least distortion measured."""

    def __init__(self, message: str, best: float):
        self.best = best
        super().__init__(message)


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


class ChecksumError(FormatError):
    pass


class ManifestError(FormatError):
    pass


class ExpansionError(FormatError):
    pass


class JpegDecodeError(CodecError):
    pass


class ImageTooLargeError(JpegDecodeError):
    pass


class DenseOnlyError(CodecError):
    """A tensor the compressed domain does not take, though it decodes: a stream that is not
    baseline sequential Huffman (progressive, arithmetic), coefficients beyond int16, outliers
    stored apart, atlases off the block grid. The tensor stays dense."""
