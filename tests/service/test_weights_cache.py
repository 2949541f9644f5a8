"""The qualities cache of ``/weights``: keyed by what the package is (not its name and version),
bounded in bytes with least-recently-served eviction, its encodes bounded and dropped when nobody
waits; and ``HEAD /weights``."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from jpegweights.codec import decode
from jpegweights.service import Settings, create_app
from jpegweights.service.errors import EncodeQueueFull
from jpegweights.service.store import EncodeQueue
from tests.conftest import ROOT

ADMIN = {"Authorization": "Bearer adm1n"}
MLP_FLOAT = ROOT / "models" / "mnist-mlp" / "model.safetensors"
CNN_FLOAT = ROOT / "models" / "mnist-cnn" / "model.safetensors"


def app_for(store, cache, **settings) -> TestClient:
    defaults = dict(admin_token="adm1n", log_requests=False)
    return TestClient(create_app(Settings(model_dir=store, cache_dir=cache, **{**defaults, **settings})))


def same_tensors(package: bytes, floats: dict[str, torch.Tensor]) -> bool:
    """Whether ``package`` decodes to ``floats``' tensors: the same names and shapes, each nearer
    to its float original than zeros are (the MLP and the CNN share no tensor name)."""
    state = decode(package)
    return state.keys() == floats.keys() and all(
        state[k].shape == v.shape and (state[k].float() - v).norm() < v.norm() for k, v in floats.items()
    )


# ---------------------------------------------------------------- identity (issue 31, item 8)


@pytest.mark.parametrize("replace", ["delete, then upload", "upload with the same version"])
def test_another_model_under_the_same_name_and_version_gets_its_own_qualities(store_copy, tmp_path, replace):
    with app_for(store_copy, tmp_path / "cache") as c:
        assert c.put("/models/digits", content=MLP_FLOAT.read_bytes(), headers=ADMIN).json()["version"] == "1"
        first = c.get("/weights", params={"model": "digits", "quality": 50}, headers=ADMIN)
        assert first.status_code == 200 and same_tensors(first.content, load_file(MLP_FLOAT))
        if replace == "delete, then upload":
            assert c.delete("/models/digits", headers=ADMIN).status_code == 200
            put = c.put("/models/digits", content=CNN_FLOAT.read_bytes(), headers=ADMIN)
        else:
            put = c.put("/models/digits", params={"version": "1"}, content=CNN_FLOAT.read_bytes(), headers=ADMIN)
        assert put.json()["version"] == "1"
        second = c.get("/weights", params={"model": "digits", "quality": 50}, headers=ADMIN)
        assert second.status_code == 200 and same_tensors(second.content, load_file(CNN_FLOAT))
        assert second.headers["etag"] != first.headers["etag"]


# ---------------------------------------------------------------- HEAD


def test_head_weights_answers_as_get_does_without_a_body(client):
    for params in ({}, {"quality": 44}):
        get = client.get("/weights", params=params)
        head = client.head("/weights", params=params)
        assert head.status_code == 200 and head.content == b""
        for header in ("etag", "content-length", "cache-control", "x-jpegweights-quality"):
            assert head.headers[header] == get.headers[header], header
        assert int(head.headers["content-length"]) == len(get.content)
        cached = client.head("/weights", params=params, headers={"If-None-Match": get.headers["etag"]})
        assert cached.status_code == 304 and cached.headers["etag"] == get.headers["etag"]


# ---------------------------------------------------------------- the encode queue (issue 31, item 3)


def test_the_queue_merges_bounds_and_drops_encodes_nobody_waits_for():
    async def main():
        queue, gate, ran, finished = EncodeQueue(workers=1, waiting=1), asyncio.Event(), [], asyncio.Event()
        started = {k: asyncio.Event() for k in "abc"}

        def work(key):
            async def encode():
                ran.append(key)
                started[key].set()
                await gate.wait()
                finished.set()
                return key

            return encode

        a = [asyncio.ensure_future(queue.run("a", work("a"))) for _ in range(3)]  # one job, three waiters
        await started["a"].wait()
        b = asyncio.ensure_future(queue.run("b", work("b")))
        await asyncio.sleep(0)  # a turn of the loop: b's request joins the queue
        assert (queue.running, queue.queued) == (1, 1)
        with pytest.raises(EncodeQueueFull, match="busy encoding other qualities") as full:
            await queue.run("c", work("c"))
        assert full.value.headers == {"Retry-After": "5"}
        b.cancel()  # its only client left before it started: dropped
        await asyncio.gather(b, return_exceptions=True)
        assert queue.queued == 0
        for waiter in a:  # every client of the running one leaves: it finishes all the same
            waiter.cancel()
        gate.set()
        await finished.wait()
        assert await queue.run("c", work("c")) == "c"  # room again
        return ran

    assert asyncio.run(main()) == ["a", "c"]  # "a" once for three requests; "b" never


# ---------------------------------------------------------------- the byte cap (issue 31, LRU)


def test_the_cache_evicts_the_least_recently_served_but_never_a_held_or_the_newest_file(tmp_path):
    from jpegweights.service.qualities import QualityCache

    cache = QualityCache(tmp_path, max_bytes=250)
    paths = {k: cache.path(k, 50) for k in "abcde"}
    for k in "ab":
        paths[k].parent.mkdir()
        paths[k].write_bytes(b"x" * 100)
        cache.add(paths[k], 100)
    assert cache.hold(paths["a"])  # served now, and read by a response
    for k in "cd":
        paths[k].parent.mkdir()
        paths[k].write_bytes(b"x" * 100)
        cache.add(paths[k], 100)
    assert {k for k, p in paths.items() if p.exists()} == {"a", "d"}  # b, then c: a is held
    assert cache.total == 200 and not paths["b"].parent.exists()  # its folder went with it
    cache.release(paths["a"])
    paths["e"].parent.mkdir()
    paths["e"].write_bytes(b"x" * 400)  # alone over the cap: it stays, as the newest
    cache.add(paths["e"], 400)
    assert {k for k, p in paths.items() if p.exists()} == {"e"}
    again = QualityCache(tmp_path, max_bytes=250)
    again.scan()  # a restart counts what is on disk
    assert again.total == 400


def test_a_small_cap_keeps_the_cache_under_it_and_readers_keep_their_files(store_copy, tmp_path):
    cache = tmp_path / "cache"
    with app_for(store_copy, cache, cache_max_bytes=1, admin_token=None) as c:  # room for the newest file only
        first = c.get("/weights", params={"quality": 31})
        [file31] = cache.rglob("q31.jpw")
        with open(file31, "rb") as reader:  # a response that has opened the file
            assert c.get("/weights", params={"quality": 32}).status_code == 200
            assert not file31.exists() and [p.name for p in cache.rglob("*.jpw")] == ["q32.jpw"]
            assert reader.read() == first.content
        again = c.get("/weights", params={"quality": 31})  # encoded afresh
        assert again.status_code == 200 and again.headers["x-jpegweights-quality"] == "31"
        assert same_tensors(again.content, load_file(store_copy / "mnist-mlp" / "model.safetensors"))
        assert [p.name for p in cache.rglob("*.jpw")] == ["q31.jpw"]


# ---------------------------------------------------------------- 503 and clients that leave


def gated(store):
    """Replace ``store``'s encode by one that waits for ``gate``; returns (started, gate, qualities)."""
    started, gate, qualities, real = threading.Event(), threading.Event(), [], store._encode

    def encode(model, quality, path):
        qualities.append(quality)
        started.set()
        assert gate.wait(120), "the test never opened the gate"
        return real(model, quality, path)

    store._encode = encode
    return started, gate, qualities


def test_a_full_encode_queue_answers_503_with_retry_after(store_copy, tmp_path):
    with app_for(store_copy, tmp_path / "cache", encode_queue=0, admin_token=None) as c:
        started, gate, _ = gated(c.app.state.runtime.store)
        answers = []
        first = threading.Thread(target=lambda: answers.append(c.get("/weights", params={"quality": 41})))
        first.start()
        try:
            assert started.wait(120)
            busy = c.get("/weights", params={"quality": 42})
            assert busy.status_code == 503 and busy.headers["retry-after"] == "5"
            assert "busy encoding other qualities (1 running, 0 waiting)" in busy.json()["detail"]
            assert c.get("/weights").status_code == 200  # the stored quality needs no encode
        finally:
            gate.set()
            first.join()
        assert answers[0].status_code == 200


def test_an_encode_whose_client_left_before_it_started_never_runs(store_copy, tmp_path):
    app = create_app(Settings(model_dir=store_copy, cache_dir=tmp_path / "cache", log_requests=False))
    runtime = app.state.runtime

    async def leaving_request(leave: asyncio.Event) -> list[dict]:
        """GET /weights?quality=42 from a client that disconnects once ``leave`` is set."""
        sent, messages = [], iter([{"type": "http.request", "body": b"", "more_body": False}])

        async def receive():
            message = next(messages, None)
            if message is None:
                await leave.wait()
                message = {"type": "http.disconnect"}
            return message

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": "/weights", "raw_path": b"/weights", "query_string": b"quality=42",
                 "root_path": "", "headers": [(b"host", b"test")], "client": ("127.0.0.1", 1), "server": ("test", 80),
                 "app": app}  # fmt: skip
        await app(scope, receive, send)
        return sent

    async def main():
        await runtime.start()
        started, gate, qualities = gated(runtime.store)
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as h:
                first = asyncio.ensure_future(h.get("/weights", params={"quality": 41}))
                assert await asyncio.to_thread(started.wait, 120)
                leave = asyncio.Event()
                second = asyncio.ensure_future(leaving_request(leave))
                for _ in range(12000):  # its request is queued: awaited, not timed
                    if runtime.store.encodes.queued == 1:
                        break
                    await asyncio.sleep(0.01)
                assert runtime.store.encodes.queued == 1
                leave.set()
                assert (await second)[0]["status"] == 499
                assert runtime.store.encodes.queued == 0
                gate.set()
                assert (await first).status_code == 200
        finally:
            gate.set()
            await runtime.stop()
        return qualities

    assert asyncio.run(main()) == [41]
