"""The handlers' exceptions: one tree, each naming what was wrong.

    HandlerError
    ├── ArchitectureError    the package's architecture cannot be built, or its tensors do not fit it
    ├── HandlerConfigError   the package's handler is unknown or its config is invalid
    ├── UntrustedCodeError   the package names code (a ``python`` architecture, a handler class)
    │                        and the loader was not told to trust it
    ├── RequestError         one request's inputs cannot be used; ``status`` is the HTTP status
    └── CalibrationError     calibration data that is missing, unreadable or does not fit the
                             model's handler, or a fidelity the handler's outputs cannot measure
"""

from __future__ import annotations

from jpegweights.codec.errors import show

__all__ = ["ArchitectureError", "CalibrationError", "HandlerConfigError", "HandlerError", "RequestError", "UntrustedCodeError", "show"]


class HandlerError(Exception):
    pass


class ArchitectureError(HandlerError):
    pass


class HandlerConfigError(HandlerError):
    pass


class UntrustedCodeError(HandlerError):
    pass


class RequestError(HandlerError, ValueError):
    """A bad request. ``status`` is the HTTP status to answer with (422 by default)."""

    def __init__(self, message: str, status: int = 422):
        self.status = status
        super().__init__(message)


class CalibrationError(HandlerError, ValueError):
    pass
