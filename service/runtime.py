"""What the app holds while it runs: settings, the model store, one batcher per model, metrics."""

from __future__ import annotations

import asyncio
import gc
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from .batching import Batcher, unbatched
from .metrics import Metrics
from .settings import Settings
from .store import Model, ModelStore


class InferenceTimeout(TimeoutError):
    pass


class Runtime:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = Metrics()
        self.store = ModelStore(settings.model_dir, settings.cache_dir, settings.resolved_device(), settings.min_forward_rows)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")  # torch uses its own threads inside
        self.batchers: dict[str, Batcher] = {}
        self.ready = False

    async def start(self) -> None:
        torch.set_num_threads(self.settings.torch_threads)
        await asyncio.to_thread(self.store.load_all)
        for name, model in self.store.models.items():
            self.metrics.decode_seconds.labels(name).set(model.decode_seconds)
            if self.settings.batching:
                batcher = Batcher(model.forward, self.settings.max_batch_size, self.settings.max_wait_ms / 1000, self.executor, self._observer(name))
                batcher.start()
                self.batchers[name] = batcher
        # Everything allocated so far lives as long as the server: keep the garbage collector
        # from rescanning it (full collections of torch's and FastAPI's objects made the p99).
        gc.collect()
        gc.freeze()
        self.ready = bool(self.store.models)
        self.metrics.ready.set(int(self.ready))

    async def stop(self) -> None:
        self.ready = False
        for batcher in self.batchers.values():
            await batcher.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)

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

    async def infer(self, model: Model, x: torch.Tensor) -> torch.Tensor:
        """Probabilities (n, classes) for raw inputs (n, *input_shape)."""
        if model.name in self.batchers:
            job = self.batchers[model.name].submit(x)
        else:
            job = unbatched(self._timed(model), x, self.executor)
        try:
            return await asyncio.wait_for(job, self.settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise InferenceTimeout(f"inference took longer than {self.settings.request_timeout_s} s") from None

    def _timed(self, model: Model):
        observe = self._observer(model.name)

        def run(x: torch.Tensor) -> torch.Tensor:
            t0 = time.perf_counter()
            out = model.forward(x)
            observe(len(x), time.perf_counter() - t0)
            return out

        return run
