"""The client against hostile or broken servers (httpx.MockTransport): every answer it cannot
trust ends in an error of the documented tree, and nothing is written outside the cache."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import httpx
import pytest

from jpegweights.client import AsyncClient, Client, HTTPStatusError, JpegWeightsError, ProtocolError, TransportError
from tests.conftest import ROOT

PACKAGE = (ROOT / "models" / "mnist-mlp" / "model.jpw").read_bytes()
ETAG = '"sha256-' + hashlib.sha256(PACKAGE).hexdigest() + '"'


def client(handler, tmp_path: Path, **kwargs) -> Client:
    return Client(
        "http://test", transport=httpx.MockTransport(handler), cache_dir=tmp_path / "cache", backoff=0, **kwargs
    )


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


@pytest.mark.parametrize("default", ["../../escape", "/etc/cron.d/x", "a/../../b", "..", ".hidden", "", 7, None])
def test_a_default_model_name_that_is_not_a_plain_name_is_refused(tmp_path, default):
    def handler(request):
        return httpx.Response(200, json={"default": default, "models": []})

    with client(handler, tmp_path) as c, pytest.raises(ProtocolError, match="no valid default model"):
        c.download()
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("name", ["../x", "/abs/path", "a/b", "..", "x" * 200])
def test_a_model_name_given_to_download_must_be_a_plain_name(tmp_path, name):
    with client(lambda r: httpx.Response(500), tmp_path) as c, pytest.raises(ValueError, match="invalid model name"):
        c.download(name, quality=20)
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"default": "m"}', b"[" * 5000])
def test_a_malformed_models_answer_is_a_protocol_error(tmp_path, body):
    with client(lambda r: httpx.Response(200, content=body), tmp_path) as c, pytest.raises(ProtocolError):
        c.models()


def test_304_with_nothing_cached_is_a_protocol_error(tmp_path):
    with (
        client(lambda r: httpx.Response(304, headers={"etag": ETAG}), tmp_path) as c,
        pytest.raises(ProtocolError, match="nothing is cached"),
    ):
        c.download("m", quality=20)


def endless(request):
    def chunks():
        while True:
            yield b"\0" * 65536

    return httpx.Response(200, headers={"etag": ETAG}, content=chunks())


def test_an_endless_download_stops_at_max_download_bytes(tmp_path):
    t0 = time.monotonic()
    with (
        client(endless, tmp_path, max_download_bytes=1 << 20) as c,
        pytest.raises(ProtocolError, match="max_download_bytes"),
    ):
        c.download("m", quality=20)
    assert time.monotonic() - t0 < 10
    assert files_under(tmp_path / "cache") == [], "the part file is discarded"


def test_a_declared_size_over_the_limit_is_refused_before_any_byte(tmp_path):
    def handler(request):
        return httpx.Response(200, headers={"etag": ETAG, "content-length": str(10 << 30)}, content=b"")

    with client(handler, tmp_path) as c, pytest.raises(ProtocolError, match="over max_download_bytes"):
        c.download("m", quality=20)


def test_more_bytes_than_declared_are_refused(tmp_path):
    def handler(request):
        def chunks():
            yield PACKAGE
            yield b"extra"

        return httpx.Response(200, headers={"etag": ETAG, "content-length": str(len(PACKAGE))}, content=chunks())

    with client(handler, tmp_path) as c, pytest.raises(JpegWeightsError):
        c.download("m", quality=20)
    assert not any(p.suffix == ".jpw" for p in files_under(tmp_path / "cache"))


def test_a_trickling_server_is_cut_off_by_the_download_deadline(tmp_path):
    def handler(request):
        def chunks():
            for _ in range(1000):
                time.sleep(0.02)
                yield b"x"

        return httpx.Response(200, headers={"etag": ETAG}, content=chunks())

    t0 = time.monotonic()
    with client(handler, tmp_path, download_timeout=0.3) as c, pytest.raises(ProtocolError, match="download_timeout"):
        c.download("m", quality=20)
    assert time.monotonic() - t0 < 3


def test_retry_after_is_honoured_and_other_waits_are_jittered(tmp_path, monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)
    answers = iter(
        [
            httpx.Response(503, headers={"retry-after": "2"}),
            httpx.Response(503),
            httpx.Response(200, content=PACKAGE, headers={"etag": ETAG}),
        ]
    )
    with Client(
        "http://test", transport=httpx.MockTransport(lambda r: next(answers)), cache_dir=tmp_path, backoff=0.1
    ) as c:
        assert c.download("m", quality=20).read_bytes() == PACKAGE
    assert waits[0] == 2.0 and 0.1 <= waits[1] <= 0.3 and len(waits) == 2


def test_retries_give_up_with_the_servers_error(tmp_path):
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(503, json={"detail": "overloaded"})

    with client(handler, tmp_path, retries=2) as c, pytest.raises(HTTPStatusError, match="503 .*overloaded"):
        c.models()
    assert len(calls) == 3


def test_an_upload_is_never_retried(tmp_path):
    """Predictions have no side effects and are retried (tests/client/test_predict_retry.py); an upload is not."""
    calls = []

    def handler(request):
        calls.append(1)
        raise httpx.ConnectError("refused")

    (tmp_path / "m.jpw").write_bytes(b"x")
    with client(handler, tmp_path) as c, pytest.raises(TransportError):
        c.push(tmp_path / "m.jpw", "m")
    assert len(calls) == 1


def test_the_async_client_has_the_same_limits(tmp_path):
    def async_endless(request):
        async def chunks():
            while True:
                yield b"\0" * 65536

        return httpx.Response(200, headers={"etag": ETAG}, content=chunks())

    async def run():
        async with AsyncClient(
            "http://test",
            transport=httpx.MockTransport(async_endless),
            cache_dir=tmp_path,
            backoff=0,
            max_download_bytes=1 << 20,
        ) as c:
            await c.download("m", quality=20)

    with pytest.raises(ProtocolError, match="max_download_bytes"):
        asyncio.run(run())
