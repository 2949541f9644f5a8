"""The client's exceptions, one documented tree:

JpegWeightsError
├── TransportError    the server could not be reached, or the connection broke (after retries)
│   └── ProtocolError     the server's answer breaks the protocol: malformed JSON, a bad
│                         model name, a 304 with nothing cached, more bytes than declared or
│                         allowed, a download past its deadline
├── HTTPStatusError   the server answered 4xx/5xx; ``status`` and the server's ``detail``
├── IntegrityError    downloaded bytes do not match the server's SHA-256 ETag
├── CodecError        the package does not decode (also a ``codec.CodecError``)
└── ModelError        the package decodes but cannot be built or run (its architecture or
                      handler; also a ``handlers.HandlerError``), or an input the model
                      cannot take
"""

from __future__ import annotations

from jpegweights import codec, handlers


class JpegWeightsError(Exception):
    pass


class TransportError(JpegWeightsError):
    pass


class ProtocolError(TransportError):
    pass


class HTTPStatusError(JpegWeightsError):
    """``bare``: the answer held no jpegweights error object (``{"detail": ...}``), as a proxy's
    own answers do (Ray's proxy answers 500 for a request whose replica died)."""

    def __init__(self, status: int, detail: str, url: str, retry_after: float | None = None, bare: bool = False):
        self.status, self.detail, self.url, self.retry_after, self.bare = status, detail, url, retry_after, bare
        super().__init__(f"{status} from {url}: {detail}")


class IntegrityError(JpegWeightsError):
    pass


class CodecError(JpegWeightsError, codec.CodecError):
    pass


class ModelError(JpegWeightsError, handlers.HandlerError):
    pass
