"""The handlers' exceptions: one tree, each naming what was wrong.

HandlerError
├── ArchitectureError    the package's architecture cannot be built, or its tensors do not fit it
├── HandlerConfigError   the package's handler is unknown or its config is invalid
├── UntrustedCodeError   the package names code (a ``python`` architecture, a handler class)
│                        and the loader was not told to trust it
├── RequestError         one request's inputs cannot be used
│   └── RequestTooLarge  more samples, pixels, scans, characters, tokens or seconds of tokenizing
│                        than the limits allow
└── CalibrationError     calibration data that is missing, unreadable or does not fit the
                         model's handler, or a fidelity the handler's outputs cannot measure

Loading never lets anything else out: whatever a library raises while a handler is configured
or its module built and run (a constructor's ``TypeError``, transformers' config validation, a
``BaseException`` such as the ``PanicException`` of a native library's panic) becomes one of the
errors above. Only ``passes_through`` exceptions (Ctrl-C, exit, cancellation) go on as they are.
"""

from __future__ import annotations

import asyncio
import re

from jpegweights.codec.errors import show

__all__ = [
    "ArchitectureError", "CalibrationError", "HandlerConfigError", "HandlerError", "RequestError", "RequestTooLarge",
    "UntrustedCodeError", "described", "one_line", "passes_through", "show",
]  # fmt: skip

ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")  # terminal escape sequences (torch colours its errors)
# What stops a process or a task, never a package's fault: re-raised wherever a load catches BaseException.
_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError)


def passes_through(exc: BaseException) -> bool:
    """True for the exceptions a load boundary must re-raise; any other is the package's fault,
    including ``BaseException`` subclasses from native code (pyo3's ``PanicException``).

    >>> passes_through(KeyboardInterrupt()), passes_through(ValueError())
    (True, False)
    """
    return isinstance(exc, _PASS_THROUGH)


def described(exc: BaseException, limit: int = 200) -> str:
    """``"TypeError: its message"`` on one line (whitespace runs collapsed, terminal colours
    removed), the message cut at a word to about ``limit`` characters, for error messages that
    promise one line.

    >>> described(ValueError("bad field:\\n    expected str"))
    'ValueError: bad field: expected str'
    """
    return f"{type(exc).__name__}: {one_line(str(exc), limit)}"


def one_line(text: str, limit: int = 200) -> str:
    """``text`` on one line, without terminal colours, cut at a word to about ``limit`` characters."""
    text = " ".join(ANSI.sub("", text).split())
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " …"


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
