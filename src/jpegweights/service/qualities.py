"""Packages at other qualities: the cache on disk (bounded in bytes, least recently served out
first) and the queue their encodes wait in (bounded, merged, dropped when nobody waits).

    cache_dir/<key>/q<Q>.jpw     key = SHA-256 of the stored package's and float source's digests

The key names the bytes an encode reads, never a model's name or version, so a model replaced
under the same name and version can never be answered from its predecessor's files.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from .errors import EncodeQueueFull

log = logging.getLogger("jpegweights.store")
T = TypeVar("T")

RETRY_AFTER_S = 5  # what a 503 from a full queue suggests: about one MiniLM encode on 2 cores


class QualityCache:
    """The cache's files and their sizes, least recently served first. Eviction (after each new
    file) removes the least recently served until the total fits ``max_bytes``, but never a held
    file (one a response is reading) nor the newest: a package larger than the cap still serves.
    A reader that opened a file before it was removed reads it whole (Linux keeps the inode).
    Used from the event loop only.

    >>> cache = QualityCache(Path("/tmp/cache"), max_bytes=1 << 30)
    >>> cache.scan()  # files left by an earlier run count, oldest first
    """

    def __init__(self, root: Path, max_bytes: int, forget: Callable[[Path], object] = lambda path: None):
        self.root, self.max_bytes, self._forget = Path(root), max_bytes, forget  # forget: drop what is known of a file
        self._files: OrderedDict[Path, int] = OrderedDict()  # path -> bytes, least recently served first
        self._held: Counter[Path] = Counter()
        self.evicted = 0  # files removed to keep under the cap, since start

    @property
    def total(self) -> int:
        return sum(self._files.values())

    def path(self, key: str, quality: int) -> Path:
        return self.root / key / f"q{quality}.jpw"

    def scan(self) -> None:
        """Count the files already on disk (an earlier run's, the old name/version layout's too),
        oldest first, and evict down to the cap. A cache folder that cannot be read counts as empty."""
        try:
            found = [(p.stat().st_mtime_ns, p, p.stat().st_size) for p in self.root.rglob("q*.jpw") if p.is_file()]
        except OSError:
            return
        self._files = OrderedDict((p, size) for _, p, size in sorted(found))
        self._evict()

    def hold(self, path: Path) -> bool:
        """Mark ``path`` as just served and keep it until ``release``; False if it is not on disk
        (never written, evicted, or removed by another replica sharing the folder)."""
        try:
            size = path.stat().st_size
        except OSError:
            self._files.pop(path, None)
            self._forget(path)
            return False
        self._files[path] = size  # another replica's file joins the count too
        self._files.move_to_end(path)
        self._held[path] += 1
        return True

    def release(self, path: Path) -> None:
        self._held[path] -= 1
        if self._held[path] <= 0:
            del self._held[path]
            self._evict()

    def add(self, path: Path, size: int) -> None:
        """A file just written: newest of all, then evict down to the cap."""
        self._files[path] = size
        self._files.move_to_end(path)
        self._evict()

    def _evict(self) -> None:
        total = self.total
        for path in list(self._files)[:-1]:  # the newest stays
            if total <= self.max_bytes:
                return
            if self._held[path] > 0:
                continue
            total -= self._files.pop(path)
            self._held.pop(path, None)
            self.evicted += 1
            self._forget(path)
            try:
                path.unlink(missing_ok=True)
                os.rmdir(path.parent)  # only once empty: OSError otherwise
            except OSError:
                pass
            log.info(json.dumps({"event": "cache_evicted", "file": path.relative_to(self.root).as_posix()}))


@dataclass
class _Job:
    waiters: int = 0
    started: bool = False
    task: asyncio.Task = field(init=False)


class EncodeQueue:
    """At most ``workers`` encodes run at once and at most ``waiting`` more wait for a turn; one
    beyond that gets ``EncodeQueueFull`` (503 with Retry-After). Requests for the same key share
    one job. A job whose every waiter has left before it started is dropped; one that has started
    runs to the end (a thread cannot be stopped), and its file is cached for the next request.

    >>> queue = EncodeQueue(workers=1, waiting=4)
    >>> size = await queue.run(("digest", 50), lambda: encode_to_disk())
    """

    def __init__(self, workers: int, waiting: int):
        self.workers, self.waiting = workers, waiting
        self._jobs: dict[Hashable, _Job] = {}
        self._slots: asyncio.Semaphore | None = None  # made in the running loop

    @property
    def queued(self) -> int:
        return sum(not job.started for job in self._jobs.values())

    @property
    def running(self) -> int:
        return sum(job.started for job in self._jobs.values())

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> T:
        """``work()``'s result, run once for every concurrent caller with the same ``key``."""
        job = self._jobs.get(key)
        if job is None:
            if len(self._jobs) >= self.workers + self.waiting:
                raise EncodeQueueFull(
                    f"the server is busy encoding other qualities ({self.running} running, {self.queued} waiting): "
                    f"retry in {RETRY_AFTER_S} s, or ask for the stored quality (no quality parameter)",
                    retry_after=RETRY_AFTER_S,
                )
            job = self._jobs[key] = _Job()
            job.task = asyncio.ensure_future(self._run(key, job, work))
            job.task.add_done_callback(lambda t: t.cancelled() or t.exception())  # nobody may be left to read it
        job.waiters += 1
        try:
            return await asyncio.shield(job.task)
        except asyncio.CancelledError:
            if job.waiters == 1 and not job.started:  # the last waiter left before it began: drop it
                self._jobs.pop(key, None)  # a new request starts afresh rather than join a cancelled job
                job.task.cancel()
            raise
        finally:
            job.waiters -= 1

    async def _run(self, key: Hashable, job: _Job, work: Callable[[], Awaitable[T]]) -> T:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.workers)
        try:
            async with self._slots:
                job.started = True
                return await work()
        finally:
            if self._jobs.get(key) is job:
                del self._jobs[key]
