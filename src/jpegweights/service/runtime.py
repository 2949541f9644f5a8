"""What the app holds while it runs: settings, the model store, one batcher per model, metrics."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

from starlette.types import Receive

from jpegweights.handlers import Batch, Limits, Request, collate, rows, split

from .batching import Batcher, unbatched
from .errors import InferenceTimeout, InputError
from .metrics import Metrics
from .settings import Settings
from .store import Model, ModelStore


INLINE_BYTES = 16 * 1024
# a request's input field -> the signature ``source`` of the models that take it
KIND_SOURCE = {"inputs": "inputs", "images": "images", "text": "text", "pairs": "text"}
log = logging.getLogger("jpegweights.service")
CLIENT_LEFT = 499  # as nginx logs it: the client closed the connection before the answer
T = TypeVar("T")


async def off_loop(inline: bool, fn, *args):
    """``fn(*args)``, in a worker thread unless ``inline``: parsing and decoding a small body
    of numbers (a few hundred microseconds at most) costs less on the event loop than the
    thread hop (two hops were a tenth of the MNIST MLP's serving profile); a large body, an
    image or a text never stalls other requests."""
    return fn(*args) if inline else await asyncio.to_thread(fn, *args)


async def unless_client_leaves(receive: Receive, work: Awaitable[T]) -> T | None:
    """``work``'s result, or None once the client has disconnected (its body already read):
    ``work`` is then cancelled. An encode nobody else waits for is dropped before it starts, and
    a request's forward passes that have not started never run (one running finishes)."""
    task = asyncio.ensure_future(work)
    left = asyncio.ensure_future(_until_disconnected(receive))
    try:
        await asyncio.wait({task, left}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
    if task.done():
        return task.result()
    task.cancel()
    return None


async def _until_disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":  # a GET's empty body first, then the wait
        pass


def decode_inline(small: bool, request: Request) -> bool:
    """Whether a request's inputs are decoded on the event loop: raw numbers from a small body
    only. Images and texts never are, however small: a crafted image or a package's
    tokenizer (a backtracking pre-tokenizer regex) can take seconds on a few kilobytes."""
    return small and request.images is None and request.text is None and request.pairs is None


class Runtime:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.limits = Limits(  # what one request may hold
            settings.max_samples,
            settings.max_image_pixels,
            settings.max_request_pixels,
            settings.max_tokens,
            settings.tokenize_timeout_s,
        )
        self.metrics = Metrics()
        self.store = ModelStore.from_settings(settings)
        # id(model) -> its inference threads (INFERENCE_WORKERS passes at once) and its batcher: one
        # model's passes never wait for another's, and a replaced model keeps both until retired
        self.executors: dict[int, ThreadPoolExecutor] = {}
        self.batchers: dict[int, Batcher] = {}
        self.unloaded: set[str] = set()  # unloaded on request: stay out of memory until loaded again
        self.manage_lock = asyncio.Lock()  # one management operation at a time
        # one upload received at a time: each holds its package and decoded tensors in memory
        self.upload_lock = asyncio.Lock()
        self.ready = False
        self.started = False  # the start-up load is over (ready or not)
        self._retiring: set[asyncio.Task] = set()

    async def start(self) -> None:
        torch.set_num_threads(self.settings.torch_threads)
        await asyncio.to_thread(self.store.load_all)
        for model in self.store.models.values():
            self._start(model)
        # Everything allocated so far lives as long as the server: keep the garbage collector
        # from rescanning it (full collections of torch's and FastAPI's objects made the p99).
        gc.collect()
        gc.freeze()
        self.ready = bool(self.store.models)
        self.metrics.ready.set(int(self.ready))
        self.started = True
        if not self.ready:
            log.error(
                json.dumps({"event": "no_models", "model_dir": str(self.settings.model_dir), "why": self.unready})
            )

    @property
    def unready(self) -> str:
        """Why the server is not ready (``/readyz``, and the 503 of requests that need a model)."""
        if not self.started:
            return "models are still loading"
        folder = self.store.model_dir
        if not folder.is_dir():
            return "no models to serve: the model folder (JPEGWEIGHTS_MODEL_DIR) does not exist"
        if self.store.failed:
            return (
                f"no models to serve: every model in the model folder failed to load ({', '.join(self.store.failed)})"
            )
        if any(p.is_dir() for p in folder.iterdir()):
            return "no models to serve: every model in the model folder is unloaded or removed"
        return "no models to serve: the model folder (JPEGWEIGHTS_MODEL_DIR) holds no model folders"

    async def stop(self) -> None:
        self.ready = False
        for task in list(self._retiring):
            task.cancel()
        for batcher in list(self.batchers.values()):
            await batcher.stop()
        for executor in self.executors.values():
            executor.shutdown(wait=False, cancel_futures=True)

    def _start(self, model: Model) -> None:
        self.metrics.decode_seconds.labels(model.name).set(model.decode_seconds)
        workers = self.settings.inference_workers
        executor = self.executors[id(model)] = ThreadPoolExecutor(workers, thread_name_prefix=f"inference-{model.name}")
        if self.settings.batching:
            batcher = Batcher(
                model.forward,
                model.max_batch_size,
                self.settings.max_wait_ms / 1000,
                executor,
                self._observer(model.name),
                workers,
            )
            batcher.start()
            self.batchers[id(model)] = batcher

    # ---- models at run time: new requests see the new model at once; requests that already
    # hold the old one finish on it (its batcher is retired once the request timeout has passed)

    def install(self, model: Model) -> None:
        self._start(model)
        old = self.store.models.get(model.name)
        self.store.models[model.name] = model  # one assignment: a request sees the old or the new model
        self.unloaded.discard(model.name)
        if old is not None:
            self._retire(old)
        self.ready = bool(self.store.models)

    def uninstall(self, name: str) -> Model:
        model = self.store.get(name)
        del self.store.models[name]
        self._retire(model)
        self._set_ready()
        return model

    def _set_ready(self) -> None:
        self.ready = bool(self.store.models)
        self.metrics.ready.set(int(self.ready))

    def _retire(self, model: Model) -> None:
        async def later() -> None:
            await asyncio.sleep(self.settings.request_timeout_s)  # every request that held it has ended
            batcher = self.batchers.pop(id(model), None)
            if batcher is not None:
                await batcher.stop()
            self.executors.pop(id(model)).shutdown(wait=False, cancel_futures=True)

        task = asyncio.get_running_loop().create_task(later())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def rescan(self) -> None:
        """Pick up the store folder's changes: new, changed and removed folders."""
        loaded = dict(self.store.models)
        found = await asyncio.to_thread(self.store.scan, loaded)
        for name, model in found.items():
            if name not in self.unloaded and loaded.get(name) is not model:
                self.install(model)
        for name in set(loaded) - set(found):
            self.uninstall(name)

    @property
    def default_model(self) -> str:
        """The configured default, or the only model when the configured one is absent."""
        name = self.settings.default_model
        if name not in self.store.models and len(self.store.models) == 1:
            return next(iter(self.store.models))
        return name

    def model_for(self, kind: str | None) -> str:
        """The model a request that names none goes to (docs/service.md, "Which model answers"):
        the only one served; else the default, for raw ``inputs`` (checked against its declared
        shape) always, and for images, text or pairs only when no other served model takes that
        kind. An image or a text fits every model of its kind (a photo resizes to an MNIST
        digit), so with several candidates the request must say which: ``InputError`` (422)."""
        models, default = self.store.models, self.default_model
        if len(models) <= 1 or kind not in KIND_SOURCE or kind == "inputs" or default not in models:
            return default
        source = KIND_SOURCE[kind]
        takers = sorted(n for n, m in models.items() if source in {s.source for s in m.handler.signature.inputs})
        if takers in ([], [default]):
            return default  # none: the default's handler says what it takes instead
        raise InputError(
            f"the request names no model, and the default {default!r} is not the only served model that takes "
            f'{kind} ({", ".join(takers)}): name one with ?model= or "model"'
        )

    def _observer(self, name: str):
        def observe(size: int, seconds: float) -> None:
            self.metrics.batch_size.labels(name).observe(size)
            self.metrics.forward.labels(name).observe(seconds)

        return observe

    async def infer(self, model: Model, x: Batch) -> Batch:
        """The handler's outputs for one request's decoded inputs (batched with others').

        A request larger than a forward pass goes in passes of the model's batch size, one
        waiting at a time: another request of the same model joins the queue behind at most
        one of them, and a request whose client left or whose deadline passed stops after the
        pass that is running (the rest are never started)."""
        batcher = self.batchers.get(id(model))
        if batcher is not None:
            step, run = model.max_batch_size, batcher.submit
        else:
            step = self.settings.max_batch_size
            executor = self.executors[id(model)]
            timed = self._timed(model)

            def run(part: Batch):
                return unbatched(timed, part, executor)

        async def passes() -> Batch:
            n = rows(x)
            if n <= step:
                return await run(x)
            parts = split(x, [min(step, n - start) for start in range(0, n, step)])
            return collate([await run(part) for part in parts])

        try:
            return await asyncio.wait_for(passes(), self.settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise InferenceTimeout(f"inference took longer than {self.settings.request_timeout_s} s") from None

    def _timed(self, model: Model):
        observe = self._observer(model.name)

        def run(x: Batch) -> Batch:
            t0 = time.perf_counter()
            out = model.forward(x)
            observe(rows(x), time.perf_counter() - t0)
            return out

        return run
