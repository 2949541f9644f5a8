"""Inference shared fairly: each model has its own inference thread, a request larger than a
forward pass goes in passes that others' requests join between, and a request whose deadline
passed stops after the pass that was running; texts are tokenized off the event loop. Held
passes wait on events, never on the clock; a tokenizer that runs too long is stopped."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient

from jpegweights.service import Settings, create_app
from tests.conftest import MNIST_STORE
from tests.handlers.test_request_budgets import BACKTRACKING, SLOW_TEXT
from tests.handlers.tiny_text import tokenizer_json, write_tiny_text

CAP = 120  # seconds: only a stuck server reaches it
V2_TEXT = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["the cat sat"]}]}


@contextmanager
def served(tmp_path, **settings) -> Iterator[TestClient]:
    config = Settings(**{"model_dir": MNIST_STORE, "cache_dir": tmp_path, "log_requests": False, **settings})
    with TestClient(create_app(config)) as c:
        yield c


class Held:
    """A model's forward passes, recorded by their rows; the first one waits for ``release``."""

    def __init__(self, client: TestClient, name: str, monkeypatch: pytest.MonkeyPatch):
        handler = client.app.state.runtime.store.models[name].handler
        self.passes: list[int] = []
        self.started, self.release = threading.Event(), threading.Event()
        run = handler.run

        def held(batch):
            self.passes.append(len(next(iter(batch.values()))))
            if len(self.passes) == 1:
                self.started.set()
                assert self.release.wait(CAP)
            return run(batch)

        monkeypatch.setattr(handler, "run", held)


def digits(n: int, value: int = 0) -> dict:
    return {"inputs": [[value] * 784] * n}


def in_background(fn, *args, **kwargs) -> tuple[threading.Thread, list]:
    answer: list = []
    thread = threading.Thread(target=lambda: answer.append(fn(*args, **kwargs)))
    thread.start()
    return thread, answer


def wait_for(condition, what: str) -> None:
    done = threading.Event()
    for _ in range(CAP * 20):
        if condition():
            return
        done.wait(0.05)
    raise TimeoutError(what)


def test_one_models_long_pass_does_not_hold_another_models_requests(tmp_path, monkeypatch):
    with served(tmp_path) as c:
        cnn = Held(c, "mnist-cnn", monkeypatch)
        thread, answer = in_background(c.post, "/predict?model=mnist-cnn", json=digits(1))
        assert cnn.started.wait(CAP)
        r = c.post("/predict?model=mnist-mlp", json=digits(1))  # answered while the CNN's pass is held
        assert r.status_code == 200 and thread.is_alive(), r.text
        cnn.release.set()
        thread.join(CAP)
        assert answer[0].status_code == 200


def test_with_two_workers_a_request_is_answered_while_another_pass_is_held(tmp_path, monkeypatch):
    with served(tmp_path, max_batch_size=4, inference_workers=2) as c:
        mlp = Held(c, "mnist-mlp", monkeypatch)
        big, big_answer = in_background(c.post, "/predict?model=mnist-mlp", json=digits(16))
        assert mlp.started.wait(CAP)
        r = c.post("/predict?model=mnist-mlp", json=digits(1, 255))  # the other worker runs it meanwhile
        assert r.status_code == 200 and big.is_alive() and mlp.passes == [4, 1], r.text
        mlp.release.set()
        big.join(CAP)
        assert big_answer[0].status_code == 200 and mlp.passes == [4, 1, 4, 4, 4]


def test_a_large_request_goes_in_passes_that_another_request_joins_between(tmp_path, monkeypatch):
    with served(tmp_path, max_batch_size=4, inference_workers=1) as c:
        mlp = Held(c, "mnist-mlp", monkeypatch)
        runtime = c.app.state.runtime
        batcher = runtime.batchers[id(runtime.store.models["mnist-mlp"])]
        big, big_answer = in_background(c.post, "/predict?model=mnist-mlp", json=digits(16))
        assert mlp.started.wait(CAP)
        small, small_answer = in_background(c.post, "/predict?model=mnist-mlp", json=digits(1, 255))
        wait_for(lambda: batcher.queue.qsize() == 1, "the small request queued")
        mlp.release.set()
        for t in (big, small):
            t.join(CAP)
        assert mlp.passes == [4, 1, 4, 4, 4]  # the small request's pass comes second, not after all 16 rows
        assert big_answer[0].status_code == small_answer[0].status_code == 200
        predictions = big_answer[0].json()["predictions"]
        assert len(predictions) == 16 and len(set(predictions)) == 1


def test_a_request_past_its_deadline_stops_after_the_running_pass(tmp_path, monkeypatch):
    with served(tmp_path, max_batch_size=4, request_timeout_s=5) as c:
        mlp = Held(c, "mnist-mlp", monkeypatch)
        r = c.post("/predict?model=mnist-mlp", json=digits(16))
        assert r.status_code == 504, r.text  # its first pass is still held
        mlp.release.set()
        assert c.post("/predict?model=mnist-mlp", json=digits(1)).status_code == 200
        assert mlp.passes == [4, 1]  # the late request's other 12 rows never ran


def test_a_request_whose_client_leaves_stops_after_the_running_pass(tmp_path, monkeypatch):
    with served(tmp_path, max_batch_size=4) as c:
        mlp = Held(c, "mnist-mlp", monkeypatch)
        leave = threading.Event()
        body = json.dumps(digits(16)).encode()

        async def leaving_request() -> list[dict]:
            """POST /predict of 16 digits from a client that disconnects once ``leave`` is set."""
            sent, messages = [], iter([{"type": "http.request", "body": body, "more_body": False}])

            async def receive():
                message = next(messages, None)
                if message is None:
                    await asyncio.to_thread(leave.wait, CAP)
                    message = {"type": "http.disconnect"}
                return message

            async def send(message):
                sent.append(message)

            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                     "scheme": "http", "path": "/predict", "raw_path": b"/predict", "query_string": b"model=mnist-mlp",
                     "root_path": "", "headers": [(b"content-type", b"application/json")],
                     "client": ("127.0.0.1", 1), "server": ("test", 80), "app": c.app}  # fmt: skip
            await c.app(scope, receive, send)
            return sent

        thread, answer = in_background(c.portal.call, leaving_request)
        assert mlp.started.wait(CAP)
        leave.set()
        thread.join(CAP)
        assert answer[0][0]["status"] == 499
        mlp.release.set()
        assert c.post("/predict?model=mnist-mlp", json=digits(1)).status_code == 200
        assert mlp.passes == [4, 1]  # the other 12 rows of the client that left never ran


def test_texts_are_tokenized_off_the_event_loop_however_small(tmp_path, monkeypatch):
    write_tiny_text(tmp_path / "store" / "tiny-text")
    with served(tmp_path / "cache", model_dir=tmp_path / "store") as c:
        handler = c.app.state.runtime.store.models["tiny-text"].handler
        on_loop: list[bool] = []
        decode = handler.decode_request

        def watched(request, limits):
            try:
                on_loop.append(asyncio.get_running_loop() is not None)
            except RuntimeError:  # no loop runs in this thread: a worker thread
                on_loop.append(False)
            return decode(request, limits)

        monkeypatch.setattr(handler, "decode_request", watched)
        assert c.post("/predict", json={"text": ["the cat sat"]}).status_code == 200
        assert c.post("/v2/models/tiny-text/infer", json=V2_TEXT).status_code == 200
        assert on_loop == [False, False]  # a package's tokenizer may take seconds on a few bytes


def test_a_request_whose_tokenizing_runs_too_long_gets_a_413_and_frees_the_server(tmp_path):
    write_tiny_text(tmp_path / "store" / "slow-text", tokenizer_json(normalizer=BACKTRACKING))
    with served(tmp_path / "cache", model_dir=tmp_path / "store", tokenize_timeout_s=2) as c:
        r = c.post("/predict", json={"text": [SLOW_TEXT] * 1024})  # minutes of tokenizing without the bound
        assert r.status_code == 413, r.text
        assert "the model's tokenizer took more than 2 s on this request" in r.json()["detail"]
        assert c.post("/predict", json={"text": ["the cat sat"]}).status_code == 200
