"""Dynamic batching: concurrent requests coalesced into one forward pass.

A request's samples stay together. Once one of ``workers`` inference threads is free, the
batcher takes the first waiting request, then keeps taking requests until ``max_batch_size``
samples are gathered or ``max_wait`` has passed since the first arrived, runs the forward pass
on that thread (the event loop never blocks) and hands each request its rows. With
``max_wait=0`` (the server's default) a batch is whatever queued while every worker was busy:
no added latency at low load, large batches under load.

Inputs and outputs are a handler's batches (dicts of tensors with the same number of rows):
requests' inputs are joined with ``handlers.collate`` and the outputs cut back with ``split``.

>>> batcher = Batcher(model.forward, max_batch_size=64, max_wait=0.002, executor=pool, workers=2)
>>> outputs = await batcher.submit(inputs)      # this request's rows of each output
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from jpegweights.handlers import Batch, Handler, collate, rows, split

# Values one module may output in one forward pass: 64 MiB of float32. The batch limit stays
# under it (MobileNetV2 at 224x224 outputs 1.2 M per image at most: 13 a pass).
MAX_PASS_VALUES = 1 << 24


class Batcher:
    def __init__(
        self,
        fn: Callable[[Batch], Batch],
        max_batch_size: int,
        max_wait: float,
        executor: ThreadPoolExecutor,
        on_batch: Callable[[int, float], None] = lambda size, seconds: None,
        workers: int = 1,
    ):
        """``workers``: passes run at once, on ``executor`` (which has at least that many threads)."""
        self.fn, self.max_batch_size, self.max_wait, self.executor, self.on_batch = (
            fn,
            max_batch_size,
            max_wait,
            executor,
            on_batch,
        )
        self.workers = workers
        self.queue: asyncio.Queue[tuple[Batch, int, asyncio.Future]] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._passes: set[asyncio.Task] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        for task in list(self._passes):
            task.cancel()
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def submit(self, x: Batch) -> Batch:
        n = rows(x)  # here, so that a malformed batch fails its own request, not the worker
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((x, n, future))
        return await future

    async def _run(self) -> None:
        free = asyncio.Semaphore(self.workers)
        while True:
            await free.acquire()  # a worker is free: gather the next batch for it
            first = await self.queue.get()
            batch, size = [first], first[1]
            deadline = time.monotonic() + self.max_wait
            while size < self.max_batch_size:
                try:
                    item = (
                        self.queue.get_nowait()
                        if time.monotonic() >= deadline
                        else await asyncio.wait_for(self.queue.get(), deadline - time.monotonic())
                    )
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                if size + item[1] > self.max_batch_size:
                    self._launch(batch, free)  # the newcomer starts the next batch
                    await free.acquire()
                    batch, size, deadline = [], 0, time.monotonic() + self.max_wait
                batch.append(item)
                size += item[1]
            self._launch(batch, free)

    def _launch(self, batch: list[tuple[Batch, int, asyncio.Future]], free: asyncio.Semaphore) -> None:
        task = asyncio.get_running_loop().create_task(self._forward(batch))
        self._passes.add(task)

        def done(task: asyncio.Task) -> None:
            self._passes.discard(task)
            free.release()

        task.add_done_callback(done)

    async def _forward(self, batch: list[tuple[Batch, int, asyncio.Future]]) -> None:
        batch = [item for item in batch if not item[2].cancelled()]  # clients that gave up
        if not batch:
            return
        sizes = [n for _, n, _ in batch]
        t0 = time.perf_counter()
        try:
            # joined in the worker thread too: padding token sequences is not free
            out = await asyncio.get_running_loop().run_in_executor(
                self.executor, lambda: split(self.fn(collate([x for x, _, _ in batch])), sizes)
            )
        except Exception as exc:  # the model failed: every waiting request gets the error
            for _, _, f in batch:
                if not f.done():
                    f.set_exception(exc)
            return
        self.on_batch(sum(sizes), time.perf_counter() - t0)
        for (_, _, f), rows_out in zip(batch, out):
            if not f.done():
                f.set_result(rows_out)


def batch_limit(
    handler: Handler, cap: int, gain: float = 1.1, overhead: float = 0.001, max_seconds: float = 0.5
) -> int:
    """The largest batch worth gathering for this model on this machine, measured at load:
    batch sizes 1, 2, 4, ... up to ``cap`` are timed on the handler's example (median of 5
    passes, plus ``overhead``: what the server spends on a pass beyond the forward itself)
    while each one raises samples per second by ``gain``. Past that point a larger batch only
    adds latency: on a 2-core CPU MobileNetV2 stops at 1 to 4 images per pass (a pass of 16
    gives fewer images per second), while the MNIST models and MiniLM go to 64. A module that
    fails on a larger batch (a hard-coded batch size) keeps the largest that ran. No batch is
    tried whose largest module output would pass ``MAX_PASS_VALUES``."""
    if cap <= 1:
        return 1
    one = handler.decode_request(handler.example())
    cap = min(cap, max(1, MAX_PASS_VALUES // largest_output(handler, one)))
    best, best_rate, n = 1, 0.0, 1
    while n <= cap:
        batch = collate([one] * n)
        times = []
        try:
            handler.run(batch)  # warm-up: allocations, lazy kernels
            for _ in range(5):
                t0 = time.perf_counter()
                handler.run(batch)
                times.append(time.perf_counter() - t0)
        except Exception:  # a module that cannot take this batch is served at the largest that worked
            break
        seconds = statistics.median(times)
        rate = n / (seconds + overhead)
        if rate < best_rate * gain:
            break
        best, best_rate = n, rate
        if seconds > max_seconds or n == cap:
            break
        n = min(2 * n, cap)
    return best


def largest_output(handler: Handler, x: Batch) -> int:
    """The most values any of the handler's modules outputs per sample of ``x`` (hooks on every
    module during one pass): a batch of n costs n times that in each layer's output."""
    sizes = [1]

    def record(module, inputs, output):
        sizes.append(max((t.numel() for t in _tensors(output)), default=0))

    hooks = [m.register_forward_hook(record) for m in handler.module.modules()]
    runner, handler.runner = handler.runner, None  # the hooks see eager PyTorch's pass only
    try:
        handler.run(x)
    finally:
        handler.runner = runner
        for h in hooks:
            h.remove()
    return math.ceil(max(sizes) / max(rows(x), handler.min_rows))


def _tensors(output):
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, (list, tuple)):
        for o in output:
            yield from _tensors(o)
    elif isinstance(output, dict):
        for o in output.values():
            yield from _tensors(o)


async def unbatched(fn: Callable[[Batch], Batch], x: Batch, executor: ThreadPoolExecutor) -> Batch:
    """One request, one forward pass (batching off)."""
    return await asyncio.get_running_loop().run_in_executor(executor, fn, x)
