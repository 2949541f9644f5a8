"""``predict`` is retried like a GET (a prediction has no side effects): on a proxy's bare 500,
502/503/504 and broken connections, never on the service's own JSON errors."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from jpegweights.client import AsyncClient, Client, HTTPStatusError

OK = {"model": "m", "predictions": [1]}


def flaky(first: httpx.Response | Exception):
    """A transport whose first /predict answer is ``first`` and every later one 200."""
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) == 1:
            if isinstance(first, Exception):
                raise first
            return first
        return httpx.Response(200, json=OK)

    return handler, calls


@pytest.mark.parametrize(
    "first",
    [
        httpx.Response(500, text="Internal Server Error"),  # Ray's proxy, for a request on a replica that died
        httpx.Response(503, json={"detail": "not now"}),
        httpx.ConnectError("connection refused"),
        httpx.RemoteProtocolError("server disconnected without sending a response"),
    ],
    ids=["bare-500", "503", "connect", "disconnect"],
)
def test_predict_is_retried_where_a_get_is(first):
    handler, calls = flaky(first)
    with Client("http://test", transport=httpx.MockTransport(handler), backoff=0) as c:
        assert c.predict([[0.0]], model="m") == OK
    assert calls == ["/predict", "/predict"]


@pytest.mark.parametrize(
    ("first", "message"),
    [
        (httpx.Response(500, json={"detail": "the model produced NaN or Infinity"}), "500 from .*NaN"),
        (httpx.Response(422, json={"detail": "inputs must be numbers"}), "422 from .*numbers"),
    ],
    ids=["service-500", "422"],
)
def test_the_services_own_errors_are_not_retried(first, message):
    handler, calls = flaky(first)
    with Client("http://test", transport=httpx.MockTransport(handler), backoff=0) as c:
        with pytest.raises(HTTPStatusError, match=message):
            c.predict([[0.0]], model="m")
    assert calls == ["/predict"]


def test_a_bare_500_that_persists_fails_after_the_retries():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(500, text="Internal Server Error")

    with Client("http://test", transport=httpx.MockTransport(handler), backoff=0, retries=2) as c:
        with pytest.raises(HTTPStatusError, match="500 from .*Internal Server Error") as err:
            c.predict([[0.0]], model="m")
    assert err.value.bare and calls == ["/predict"] * 3


def test_push_is_never_retried(tmp_path):
    package = tmp_path / "m.jpw"
    package.write_bytes(b"x")
    handler, calls = flaky(httpx.Response(500, text="Internal Server Error"))
    with Client("http://test", transport=httpx.MockTransport(handler), backoff=0) as c:
        with pytest.raises(HTTPStatusError):
            c.push(package, "m")
    assert calls == ["/models/m"]


def test_the_async_client_retries_predict_the_same_way():
    handler, calls = flaky(httpx.Response(500, text="Internal Server Error"))

    async def predict() -> dict:
        async with AsyncClient("http://test", transport=httpx.MockTransport(handler), backoff=0) as c:
            return await c.predict([[0.0]], model="m")

    assert asyncio.run(predict()) == OK
    assert calls == ["/predict", "/predict"]
