"""The client against a real server that trickles its response headers (a raw socket server in a
thread, not a mock: the bound must hold on real sockets, where httpx's read timeout restarts with
every byte). Each attempt ends at its deadline with a ``TransportError`` that names it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jpegweights.client import AsyncClient, Client, TransportError

INTERVAL = 0.05  # seconds between header bytes: far under the read timeout below
TRICKLE_BYTES = 600  # 30 s of trickling: without a deadline the client waits all of it
READ_TIMEOUT = 5.0  # httpx's own timeout, per read: a byte every INTERVAL never trips it
DEADLINE = 0.5


class TricklingServer:
    """Answers every request with a status line, then one header byte every INTERVAL; completes
    the answer (``completed`` is set) only after TRICKLE_BYTES of them, unless stopped."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.stop, self.started, self.completed = threading.Event(), threading.Event(), threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # the listener was closed: the test is over
                return
            thread = threading.Thread(target=self._trickle, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                self.started.set()
                for _ in range(TRICKLE_BYTES):
                    if self.stop.wait(INTERVAL):
                        return
                    conn.sendall(b"a")
                conn.sendall(b"\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
                self.completed.set()
            except OSError:  # the client hung up: what the deadline should make it do
                return

    def close(self) -> None:
        self.stop.set()
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone does not
        self.listener.close()
        for thread in self.threads:
            thread.join()


@pytest.fixture()
def trickling() -> Iterator[TricklingServer]:
    server = TricklingServer()
    yield server
    server.close()


def options(tmp_path: Path, **kwargs) -> dict:
    return {"cache_dir": tmp_path / "cache", "retries": 0, "timeout": READ_TIMEOUT, **kwargs}


def call_sync(url: str, what: str, opts: dict) -> None:
    with Client(url, **opts) as c:
        c.models() if what == "models" else c.download("m", quality=20)


def call_async(url: str, what: str, opts: dict) -> None:
    async def go() -> None:
        async with AsyncClient(url, **opts) as c:
            await (c.models() if what == "models" else c.download("m", quality=20))

    asyncio.run(go())


@pytest.mark.parametrize("call", [call_sync, call_async], ids=["Client", "AsyncClient"])
@pytest.mark.parametrize("what", ["models", "download"])
def test_trickled_response_headers_end_at_request_timeout(trickling, tmp_path, call, what):
    t0 = time.monotonic()
    with pytest.raises(TransportError, match=rf"within request_timeout={DEADLINE} s"):
        call(trickling.url, what, options(tmp_path, request_timeout=DEADLINE))
    assert trickling.started.is_set() and not trickling.completed.is_set()
    assert time.monotonic() - t0 < TRICKLE_BYTES * INTERVAL / 2  # far from both 0.5 s and 30 s


@pytest.mark.parametrize("call", [call_sync, call_async], ids=["Client", "AsyncClient"])
def test_a_download_deadline_shorter_than_request_timeout_bounds_the_headers_too(trickling, tmp_path, call):
    with pytest.raises(TransportError, match="the download took longer than download_timeout"):
        call(trickling.url, "download", options(tmp_path, download_timeout=DEADLINE, request_timeout=60))
    assert trickling.started.is_set() and not trickling.completed.is_set()


def test_every_retry_gets_its_own_deadline(trickling, tmp_path):
    with pytest.raises(TransportError, match="request_timeout"):
        call_sync(trickling.url, "models", options(tmp_path, request_timeout=DEADLINE, retries=2, backoff=0))
    assert len(trickling.threads) - 1 == 3, "one connection per attempt"
    assert not trickling.completed.is_set()
