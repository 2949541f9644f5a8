"""``StreamDecoder``: a package decoded while its bytes arrive, each atlas as soon as it is in.

>>> decoder = StreamDecoder(device="cpu")
>>> for chunk in response.iter_bytes():
...     decoder.feed(chunk)                  # checks and decodes whatever is complete
>>> state, manifest = decoder.finish()       # the rest, then the digest: all or nothing

The header is parsed as soon as it has arrived, and (packed files) the index once its bytes
have. From then on every entry is checked, and every atlas decoded in a thread pool, once the
stored tensors it needs have arrived; the digest is computed as the bytes come. Nothing is
returned before the whole file has arrived and its digest matched; on a mismatch that
``ChecksumError`` is what ``finish`` raises, whatever else the corruption broke, and a file
that ends early raises ``TruncatedError``. The data can come in any order: writers here put
the ranges (float tensors) before the atlases (uint8), so atlases decode on arrival.

On CUDA the bytes are only gathered, and ``finish`` decodes them in nvJPEG batches.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from jpegweights import cpus

from . import codings
from .codings import jpeg as jpeg_coding
from .container import (
    DATA,
    DIGEST_KEY,
    PACKED_KEY,
    Header,
    header_length,
    packed_index,
    packed_index_span,
    parse_header,
    plain_digest,
    plain_manifest,
    views,
)
from .decoding import decode_stored
from .errors import ChecksumError, FormatError, TruncatedError
from .manifest import check_atlas, check_layout, check_values


class StreamDecoder:
    """Feed a ``.jpw`` file's bytes in order with ``feed``; ``finish`` returns ``(state_dict,
    manifest)``. ``max_bytes`` refuses a file whose header declares more. ``on_manifest`` is
    called with the manifest once it has arrived, UNCHECKED (the digest covers bytes still to
    come): a hint, e.g. to import what the architecture needs meanwhile. Close it (or use it
    as a context manager) to stop its threads when a download is abandoned."""

    def __init__(
        self,
        device: str | torch.device = "cpu",
        workers: int | None = None,
        max_bytes: int | None = None,
        on_manifest: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.device, self.max_bytes, self.on_manifest = torch.device(device), max_bytes, on_manifest
        self._workers = workers or min(8, cpus.available())
        self._prefix = bytearray()
        self._header: Header | None = None
        self._body = memoryview(b"")  # the data section, written as it arrives
        self._got = 0
        self._hash: Any = None
        self._expected = ""
        self._stored: dict[str, torch.Tensor] = {}
        self._manifest: dict[str, Any] | None = None
        self._ready: list[tuple[int, int, Callable[[], None]]] = []  # (bytes needed, order, step)
        self._order = itertools.count()
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future] = []
        self._pending: dict[str, torch.Tensor] = {}  # JPEG entries whose atlases are under way
        self._done: dict[str, torch.Tensor] = {}
        self._error: BaseException | None = None

    def __enter__(self) -> StreamDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def received(self) -> int:
        """Bytes fed so far."""
        return len(self._prefix) + self._got

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """Take the next bytes of the file. Raises a ``FormatError`` at once for a header that
        cannot be read (no digest to check it against) and for bytes past the file's end;
        anything else wrong waits for ``finish``, which tells corruption from a bad package."""
        data = memoryview(chunk).cast("B")
        if self._header is None:
            data = self._take_header(data)
            if self._header is None:
                return
        if not data:
            return
        if self._got + len(data) > len(self._body):
            raise FormatError(f"bytes past the {self._header.data_bytes:,}-byte data section its header declares")
        self._body[self._got : self._got + len(data)] = data
        self._hash.update(data)
        self._got += len(data)
        self._advance()

    def _take_header(self, data: memoryview) -> memoryview:
        """Gather the header's bytes; once they are all in, parse it and return what follows."""
        want = 8 if len(self._prefix) < 8 else 8 + header_length(self._prefix)
        while len(self._prefix) < want:
            take = min(want - len(self._prefix), len(data))
            self._prefix += data[:take]
            data = data[take:]
            if len(self._prefix) < want:
                return data
            want = 8 + header_length(self._prefix)
        self._header, _ = parse_header(self._prefix, None)
        total = len(self._prefix) + self._header.data_bytes
        if self.max_bytes is not None and total > self.max_bytes:
            raise FormatError(f"the package is {total:,} bytes, over the limit of {self.max_bytes:,}")
        # not a bytearray, which zeroes its pages up front (33 ms for 80 MB): numpy's are
        # touched only as the bytes arrive
        self._body = memoryview(np.empty(self._header.data_bytes, np.uint8))
        if PACKED_KEY in self._header.metadata:
            begin, end = packed_index_span(self._header)
            self._hash, self._expected = hashlib.sha256(), self._header.metadata[DIGEST_KEY]
            self._at(end, lambda: self._open_packed(begin, end))
        else:
            text, self._expected = plain_digest(self._header)
            self._hash = hashlib.sha256(text.encode("utf-8"))
            self._at(0, lambda: self._open(self._header, self._body, plain_manifest(text)))
        self._advance()
        return data

    def _open_packed(self, begin: int, end: int) -> None:
        inner, manifest = packed_index(self._header, self._body[begin:end])
        self._open(inner, self._body[self._header.entries[DATA][2] :], manifest, base=end)

    def _open(self, header: Header, data: memoryview, manifest: dict[str, Any], base: int = 0) -> None:
        """The manifest is in: check what needs no data, then queue each entry for when its
        stored tensors (at ``base`` + their offsets in the body) have arrived."""
        self._stored = views(header, data)
        check_layout(manifest, self._stored)
        self._manifest = manifest
        if self.on_manifest is not None:
            self.on_manifest(manifest)
        if self.device.type != "cpu":
            return  # finish decodes it all, in batches

        def end(key: str) -> int:
            return base + header.entries[key][3]

        for name, entry in manifest["tensors"].items():
            own = max(end(entry[k]) for k in ("key", "scale", "offset", "outliers", "outlier_values") if k in entry)
            atlases = [max(own, end(a["key"])) for a in entry.get("atlases", ())]
            self._at(own, lambda name=name, entry=entry, atlases=atlases: self._entry(name, entry, atlases))

    def _entry(self, name: str, entry: dict[str, Any], atlas_ends: list[int]) -> None:
        """An entry's own stored tensors are in: check them, then decode it, or (JPEG) queue each
        atlas for when its stream is in."""
        check_values(name, entry, self._stored)
        if entry["coding"] != "jpeg":
            self._submit(lambda: self._done.__setitem__(name, codings.decode(name, entry, self._stored, "cpu")))
            return
        self._pending[name], jobs = jpeg_coding.jobs(name, entry, self._stored, "cpu")
        for (fill, a), needed in zip(jobs, atlas_ends):
            self._at(needed, lambda fill=fill, a=a: self._atlas(name, fill, a))

    def _atlas(self, name: str, fill: Callable[..., None], a: dict[str, Any]) -> None:
        check_atlas(name, a, self._stored)
        self._submit(lambda: fill(a))

    def _at(self, needed: int, step: Callable[[], None]) -> None:
        heapq.heappush(self._ready, (needed, next(self._order), step))

    def _submit(self, job: Callable[[], None]) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="jpegweights-stream")
        self._futures.append(self._pool.submit(job))

    def _advance(self) -> None:
        """Run every queued step whose bytes have all arrived. The first error stops the
        decoding (the bytes are still hashed, for ``finish`` to tell corruption apart)."""
        while self._ready and self._ready[0][0] <= self._got and self._error is None:
            step = heapq.heappop(self._ready)[2]
            try:
                step()
            except Exception as exc:
                self._stop(exc)

    def _stop(self, exc: BaseException) -> None:
        self._error = self._error or exc
        self._ready.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def finish(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The decoded tensors in manifest order and the manifest, once every byte has arrived
        and the digest matched; otherwise the ``CodecError`` that says why."""
        try:
            if self._header is None or self._got < len(self._body):
                raise TruncatedError(f"the package ended after {self.received:,} bytes, before its data section did")
            for future in self._futures:
                if self._error is not None:
                    break
                try:
                    future.result()
                except Exception as exc:
                    self._stop(exc)
            if self._hash.hexdigest() != self._expected:
                raise ChecksumError("SHA-256 digest mismatch: the file is corrupt or was altered")
            if self._error is not None:
                raise self._error
            tensors = self._manifest["tensors"]
            if self.device.type != "cpu":
                return decode_stored(self._stored, self._manifest, self.device, None), self._manifest
            state = {
                name: jpeg_coding.finish(name, entry, self._stored, self._pending[name])
                if name in self._pending
                else self._done[name]
                for name, entry in tensors.items()
            }
            return state, self._manifest
        finally:
            self.close()

    def close(self) -> None:
        """Stop the decoding threads; what they made is dropped."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
