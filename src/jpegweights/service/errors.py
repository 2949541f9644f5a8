"""The service's exceptions, and the one table that gives each exception its HTTP status.

    ServiceError                            500  the fallback: every subclass has its own row
    ├── InputError (ValueError)             422  a request's inputs the model cannot use
    │   ├── BadRequest                      400  a body that cannot be parsed or contradicts itself;
    │   │                                        the v2 protocol answers every bad input so
    │   └── InputTooLarge                   413  more samples, pixels or characters than allowed
    ├── StoreError (ValueError)             422  a model folder, name or upload that cannot be served
    ├── StoreUnwritable                     409  the model store's folder cannot be written
    ├── CacheUnwritable                     503  the package cache cannot be written (the server's setup)
    ├── EncodeQueueFull                     503  too many encodes of other qualities running and waiting
    │                                            (with Retry-After)
    ├── NotFound (LookupError)              404  something the request names that the server lacks
    │   ├── ModelNotFound                   404  no such model, model folder, tensor or atlas
    │   ├── QualityUnavailable              404  no float source the server can read, to code another quality from
    │   └── GalleryError                    404  no such tensor, page or picture on the web page
    ├── InferenceTimeout (TimeoutError)     504  a forward pass that outlasted request_timeout_s
    ├── UploadTimeout                       408  an upload whose body outlasted upload_timeout_s
    └── NonFiniteOutput (ArithmeticError)   500  the model computed NaN or Infinity: its fault

Foreign exceptions in the same table: the handlers' ``RequestError`` (422) and
``RequestTooLarge`` (413), the codec's ``CodecError`` (500: a broken package on disk),
FastAPI's ``HTTPException`` (its own status and headers; a service error with a ``headers``
attribute sends those too) and ``RequestValidationError`` (422).
Every answer is ``{"detail": message}``, or ``{"error": message}`` under ``/v2`` (the Open
Inference Protocol's error object).

>>> status_of(ModelNotFound("unknown model 'x'"))
404
"""

from __future__ import annotations

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError

from jpegweights.codec import CodecError
from jpegweights.handlers import RequestError, RequestTooLarge


class ServiceError(Exception):
    """Anything the service answers with an error status; ``STATUS`` says which."""


class InputError(ServiceError, ValueError):
    """A request whose inputs the model cannot use."""


class BadRequest(InputError):
    """A body that cannot be parsed, or a request that contradicts itself."""


class InputTooLarge(InputError):
    """More samples, pixels or characters than the server takes in one request."""


class StoreError(ServiceError, ValueError):
    """A model folder that cannot be served; its message names no filesystem path."""


class StoreUnwritable(ServiceError):
    """The model store's folder cannot be written, so an upload cannot be published."""


class CacheUnwritable(ServiceError):
    """The package cache (``cache_dir``) cannot be written, so another quality cannot be coded."""


class EncodeQueueFull(ServiceError):
    """Every encode slot busy and the queue full: the answer carries ``headers`` (Retry-After)."""

    def __init__(self, message: str, retry_after: int = 5):
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class NotFound(ServiceError, LookupError):
    """Something the request names that the server does not have."""


class ModelNotFound(NotFound):
    pass


class QualityUnavailable(NotFound):
    pass


class GalleryError(NotFound):
    """A tensor, page or picture the model does not have."""


class InferenceTimeout(ServiceError, TimeoutError):
    pass


class UploadTimeout(ServiceError):
    """Not a ``TimeoutError``, which is an ``OSError``: that would read as an unwritable store."""


class NonFiniteOutput(ServiceError, ArithmeticError):
    """The model computed NaN or Infinity: a fault of the model, never sent as invalid JSON."""


# The one table. An exception gets the status of the first class of its MRO found here, so a
# subclass without a row of its own answers as its parent does.
STATUS: dict[type[Exception], int] = {
    ServiceError: 500,
    InputError: 422,
    BadRequest: 400,
    InputTooLarge: 413,
    StoreError: 422,
    StoreUnwritable: 409,
    CacheUnwritable: 503,
    EncodeQueueFull: 503,
    NotFound: 404,
    ModelNotFound: 404,
    QualityUnavailable: 404,
    GalleryError: 404,
    InferenceTimeout: 504,
    UploadTimeout: 408,
    NonFiniteOutput: 500,
    RequestError: 422,
    RequestTooLarge: 413,
    CodecError: 500,
    HTTPException: 500,  # its own status_code instead (status_of)
    RequestValidationError: 422,
}


def status_of(exc: Exception) -> int:
    """The HTTP status that answers ``exc`` (``KeyError`` for an exception not in ``STATUS``)."""
    if isinstance(exc, HTTPException):
        return exc.status_code
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    raise KeyError(f"{type(exc).__name__} has no status in the table")


def message_of(exc: Exception) -> str:
    """What the answer's body says about ``exc``."""
    if isinstance(exc, HTTPException):
        return str(exc.detail)
    if isinstance(exc, RequestValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    if isinstance(exc, CodecError):  # a broken package on disk: our fault, said plainly
        return f"stored package is unreadable: {exc}"
    return str(exc)
