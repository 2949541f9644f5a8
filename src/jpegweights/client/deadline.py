"""A deadline on a whole request, enforced on every socket operation.

httpx's ``timeout`` bounds each connect, read and write alone: a server that trickles its
response headers a byte at a time never trips it, and waits forever. Here the client's own
transports get a network backend whose streams give every operation the lesser of its own
timeout and what is left until the deadline in force, so a trickle ends at the deadline with
``httpx.ReadTimeout`` (the client turns it into ``TransportError``).

>>> install(http)                                  # once, on an httpx.Client or AsyncClient
>>> with deadline(30.0, "no answer within request_timeout=30 s"):
...     http.send(request, stream=True)            # headers (and, unstreamed, the body) by then
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx

# (monotonic deadline, what to say when it passes); a context variable, so each thread (sync)
# or task (async) sees its own request's deadline, on whichever pooled connection it uses
_DEADLINE: ContextVar[tuple[float, str] | None] = ContextVar("jpegweights_deadline", default=None)


@contextmanager
def deadline(seconds: float, why: str) -> Iterator[None]:
    """Every socket operation in this block ends by ``seconds`` from now (a nested deadline
    can only shorten it), raising a timeout of httpcore's whose message is ``why``."""
    outer = _DEADLINE.get()
    at = time.monotonic() + seconds
    token = _DEADLINE.set((at, why) if outer is None or at < outer[0] else outer)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def _bound(timeout: float | None, error: type[Exception]) -> float | None:
    """The timeout for one operation: its own, cut to what is left of the deadline."""
    current = _DEADLINE.get()
    if current is None:
        return timeout
    left = current[0] - time.monotonic()
    if left <= 0:
        raise error(current[1])
    return left if timeout is None else min(timeout, left)


def _expired(error: type[Exception]) -> None:
    """After an operation timed out: say why if it was the deadline that ran out."""
    current = _DEADLINE.get()
    if current is not None and time.monotonic() >= current[0]:
        raise error(current[1])


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream):
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            return self._inner.read(max_bytes, _bound(timeout, httpcore.ReadTimeout))
        except httpcore.ReadTimeout:
            _expired(httpcore.ReadTimeout)
            raise

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            self._inner.write(buffer, _bound(timeout, httpcore.WriteTimeout))
        except httpcore.WriteTimeout:
            _expired(httpcore.WriteTimeout)
            raise

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, _bound(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _AsyncStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream):
        self._inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            return await self._inner.read(max_bytes, _bound(timeout, httpcore.ReadTimeout))
        except httpcore.ReadTimeout:
            _expired(httpcore.ReadTimeout)
            raise

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            await self._inner.write(buffer, _bound(timeout, httpcore.WriteTimeout))
        except httpcore.WriteTimeout:
            _expired(httpcore.WriteTimeout)
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> Any:
        bound = _bound(timeout, httpcore.ConnectTimeout)
        return _AsyncStream(await self._inner.start_tls(ssl_context, server_hostname, bound))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend):
        self._inner = inner

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, **kwargs: Any) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_tcp(host, port, _bound(timeout, httpcore.ConnectTimeout), **kwargs))

    def connect_unix_socket(self, path: str, timeout: float | None = None, **kwargs: Any) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_unix_socket(path, _bound(timeout, httpcore.ConnectTimeout), **kwargs))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _AsyncBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, inner: httpcore.AsyncNetworkBackend):
        self._inner = inner

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, **kwargs: Any) -> Any:
        bound = _bound(timeout, httpcore.ConnectTimeout)
        return _AsyncStream(await self._inner.connect_tcp(host, port, bound, **kwargs))

    async def connect_unix_socket(self, path: str, timeout: float | None = None, **kwargs: Any) -> Any:
        bound = _bound(timeout, httpcore.ConnectTimeout)
        return _AsyncStream(await self._inner.connect_unix_socket(path, bound, **kwargs))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def install(http: httpx.Client | httpx.AsyncClient) -> None:
    """Put deadline-aware backends under the connection pools of ``http``'s own transports (the
    default one and those for proxies). httpx has no public hook for a network backend, so this
    reaches into its pools; a transport given by the caller (a mock, an ASGI app) is left alone.
    ``tests/client/test_slow_headers.py`` fails if a new httpx moves what this relies on."""
    wrap = _AsyncBackend if isinstance(http, httpx.AsyncClient) else _Backend
    transports = [http._transport, *(t for t in http._mounts.values() if t is not None)]
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        if isinstance(transport, (httpx.HTTPTransport, httpx.AsyncHTTPTransport)) and pool is not None:
            if not isinstance(pool._network_backend, wrap):
                pool._network_backend = wrap(pool._network_backend)
