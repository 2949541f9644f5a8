"""What the app holds while it runs: settings, the model store, one batcher per model, metrics."""

from __future__ import annotations

import asyncio
import gc
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from jpegweights.handlers import Batch, Limits, rows

from .batching import Batcher, unbatched
from .errors import InferenceTimeout
from .metrics import Metrics
from .settings import Settings
from .store import LoadOptions, Model, ModelStore


INLINE_BYTES = 16 * 1024


async def off_loop(inline: bool, fn, *args):
    """``fn(*args)``, in a worker thread unless ``inline``: parsing and decoding a small body
    without images (a few hundred microseconds at most) costs less on the event loop than the
    thread hop (two hops were a tenth of the MNIST MLP's serving profile); a large body or an
    image never stalls other requests."""
    return fn(*args) if inline else await asyncio.to_thread(fn, *args)


class Runtime:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.limits = Limits(settings.max_samples, settings.max_image_pixels)  # what one request may hold
        self.metrics = Metrics()
        self.store = ModelStore(settings.model_dir, settings.cache_dir, LoadOptions.from_settings(settings))
        self.executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="inference"
        )  # torch uses its own threads inside
        self.batchers: dict[int, Batcher] = {}  # id(model) -> its batcher: a replaced model keeps its own until retired
        self.unloaded: set[str] = set()  # unloaded on request: stay out of memory until loaded again
        self.manage_lock = asyncio.Lock()  # one management operation at a time
        self.ready = False
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

    async def stop(self) -> None:
        self.ready = False
        for task in list(self._retiring):
            task.cancel()
        for batcher in list(self.batchers.values()):
            await batcher.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _start(self, model: Model) -> None:
        self.metrics.decode_seconds.labels(model.name).set(model.decode_seconds)
        if self.settings.batching:
            batcher = Batcher(
                model.forward,
                model.max_batch_size,
                self.settings.max_wait_ms / 1000,
                self.executor,
                self._observer(model.name),
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
        batcher = self.batchers.get(id(model))
        if batcher is None:
            return

        async def later() -> None:
            await asyncio.sleep(self.settings.request_timeout_s)  # every request that held it has ended
            await batcher.stop()
            self.batchers.pop(id(model), None)

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

    def _observer(self, name: str):
        def observe(size: int, seconds: float) -> None:
            self.metrics.batch_size.labels(name).observe(size)
            self.metrics.forward.labels(name).observe(seconds)

        return observe

    async def infer(self, model: Model, x: Batch) -> Batch:
        """The handler's outputs for one request's decoded inputs (batched with others')."""
        batcher = self.batchers.get(id(model))
        if batcher is not None:
            job = batcher.submit(x)
        else:
            job = unbatched(self._timed(model), x, self.executor)
        try:
            return await asyncio.wait_for(job, self.settings.request_timeout_s)
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
