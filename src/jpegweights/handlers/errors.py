"""The handlers' exceptions: one tree, each naming what was wrong.

HandlerError
├── ArchitectureError    the package's architecture cannot be built, or its tensors do not fit it
├── HandlerConfigError   the package's handler is unknown or its config is invalid
├── UntrustedCodeError   the package names code (a ``python`` architecture, a handler class)
│                        and the loader was not told to trust it
├── RequestError         one request's inputs cannot be used
│   └── RequestTooLarge  more samples, pixels or characters than the limits allow
└── CalibrationError     calibration data that is missing, unreadable or does not fit the
                         model's handler, or a fidelity the handler's outputs cannot measure
"""

from __future__ import annotations

from jpegweights.codec.errors import show

__all__ = [
    "ArchitectureError", "CalibrationError", "HandlerConfigError", "HandlerError", "RequestError", "RequestTooLarge",
    "UntrustedCodeError", "show",
]  # fmt: skip


class HandlerError(Exception):
    pass


class ArchitectureError(HandlerError):
    pass


class HandlerConfigError(HandlerError):
    pass


class UntrustedCodeError(HandlerError):
    pass


class RequestError(HandlerError, ValueError):
    """A request whose inputs the handler cannot use. A server decides how to answer it from
    the class (the service's ``errors.STATUS``): the handlers know nothing of HTTP."""


class RequestTooLarge(RequestError):
    """A request over ``Limits`` (samples, pixels) or a handler's own limit (text length)."""


class CalibrationError(HandlerError, ValueError):
    pass
