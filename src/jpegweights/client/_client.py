"""``Client`` and ``AsyncClient``: httpx-based, one shared base for everything that is not I/O.

>>> with Client("http://127.0.0.1:8000") as c:
...     model = c.load("mnist-mlp", quality=20)     # download (cached, verified), decode, rebuild
...     model(images).argmax(1)                      # raw pixels 0..255 in, logits out
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import os
import random
import shutil
import sys
import time
from collections.abc import Sequence
from contextlib import aclosing, closing
from pathlib import Path
from typing import Any

import httpx
import torch

from jpegweights import codec
from jpegweights.codec.streaming import StreamDecoder
from jpegweights.files import atomic_path
from jpegweights.handlers.architectures import preload
from .cache import Entry, check_name, default_cache_dir, sha256_of
from .deadline import deadline, install
from .errors import CodecError, HTTPStatusError, ProtocolError, TransportError
from .model import PackagedModel

Decoded = tuple[dict[str, torch.Tensor], dict[str, Any]]  # (state_dict, manifest)
RETRY_STATUSES = {502, 503, 504}
# A bare 500 (no jpegweights error object) comes from an intermediary, not from the service: Ray's
# proxy answers so for a request in flight on a replica that died. The service's own 500s (a
# broken package, a model computing NaN) say why in JSON and would fail again: never retried.
RETRY_BARE_STATUSES = {500}
MAX_RETRY_AFTER = 60.0  # seconds: a server's Retry-After is honoured up to this


class _Receiver:
    """One /weights answer's bytes on their way into the cache's part file: bounded by what the
    server declared, by ``max_download_bytes`` and by the download's deadline, hashed for the
    ETag as they come and, given a ``decoder``, decoded as they come. Shared by both clients,
    which only feed it chunks."""

    def __init__(
        self,
        entry: Entry,
        etag: str,
        quality: int | None,
        start: int,
        declared: int | None,
        limit: int,
        deadline: float,
        bar: Any,
        decoder: StreamDecoder | None,
    ):
        self.entry, self.etag, self.quality, self.bar = entry, etag, quality, bar
        self.received, self.declared, self.limit, self.deadline = start, declared, limit, deadline
        self.start, self.decoder = start, decoder
        self.sha = hashlib.sha256()
        self.decode_error: codec.CodecError | None = None
        self.file = open(entry.part, "ab")  # noqa: SIM115  (closed by __exit__)
        if start:  # a resumed download: what is already here is hashed and decoded first
            with open(entry.part, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    self._take(chunk)

    def __enter__(self) -> _Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()
        self.bar.close()
        if self.decoder is not None:
            self.decoder.close()

    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.declared is not None and self.received - self.start > self.declared:
            self._abort(f"the server sent more than the {self.declared} bytes it declared")
        if self.received > self.limit:
            self._abort(f"the download passed max_download_bytes={self.limit}")
        if time.monotonic() > self.deadline:  # the part file stays: a later call resumes it
            raise ProtocolError("the download took longer than download_timeout")
        self.file.write(chunk)
        self.bar.update(len(chunk))
        self._take(chunk)

    def _take(self, chunk: bytes) -> None:
        self.sha.update(chunk)
        if self.decoder is None or self.decode_error is not None:
            return
        try:
            self.decoder.feed(chunk)
        except codec.CodecError as exc:  # the ETag, checked at the end, tells a bad transfer apart
            self.decode_error = exc
            self.decoder.close()

    def _abort(self, why: str) -> None:
        self.file.close()
        self.entry.discard_part()
        raise ProtocolError(why)

    def commit(self) -> tuple[Path, Decoded | None]:
        """Check the bytes against the ETag, then the decoded package (if decoding), and only then
        rename the part file into the cache: ``(path, (state_dict, manifest) or None)``."""
        self.file.close()
        digest = self.sha.hexdigest()
        self.entry.check_part(self.etag, digest)
        decoded = None
        if self.decoder is not None:
            try:
                if self.decode_error is not None:
                    raise self.decode_error
                decoded = self.decoder.finish()
            except codec.CodecError as exc:
                self.entry.discard_part()
                raise CodecError(f"{self.entry.path.parent.name}: {exc}") from exc
        return self.entry.commit(self.etag, self.quality, digest), decoded


class _Base:
    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 30.0,
        cache_dir: str | os.PathLike | None = None,
        retries: int = 3,
        backoff: float = 0.2,
        progress: bool | None = None,
        verify: Any = None,
        max_download_bytes: int = 8 << 30,
        download_timeout: float = 3600.0,
        request_timeout: float = 120.0,
    ):
        """``timeout`` bounds each connect and each read; ``request_timeout`` each request up to
        its whole answer, or up to the response headers for a download (a server trickling one
        byte at a time never trips a read timeout: this deadline holds on every socket operation
        of the client's own transport); ``download_timeout`` a whole download, headers included;
        ``max_download_bytes`` its size, whatever the server declares. Past a deadline the
        attempt fails as a broken connection does. GETs and predictions (no side effects) are
        retried ``retries`` times on broken connections, 502/503/504 and a proxy's bare 500,
        after ``Retry-After`` or an exponential, jittered backoff; uploads never are."""
        self.base_url = base_url.rstrip("/")
        # httpx builds a TLS context for every client (25 ms measured) even for http:// URLs,
        # where it is never used (redirects are not followed); skip it there unless asked.
        self._verify = verify if verify is not None else self.base_url.startswith("https://")
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.retries, self.backoff = retries, backoff
        self.progress = sys.stderr.isatty() if progress is None else progress
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = timeout
        self.max_download_bytes, self.download_timeout = max_download_bytes, download_timeout
        self.request_timeout = request_timeout
        self._default_model: str | None = None

    # ---- pure helpers shared by both clients

    def _after_failure(self, exc: Exception, attempt: int, what: str) -> float:
        """Seconds to wait before the next attempt, or raise ``exc`` (translated) when it is final:
        only broken connections, 502/503/504 and a bare 500 are retried, ``retries`` times at most."""
        if isinstance(exc, HTTPStatusError):
            retryable = exc.status in RETRY_STATUSES or (exc.bare and exc.status in RETRY_BARE_STATUSES)
            if attempt >= self.retries or not retryable:
                raise exc
            if exc.retry_after is not None:
                return exc.retry_after
        elif attempt >= self.retries:
            raise TransportError(f"{what}: {exc}") from exc
        return self.backoff * 2**attempt * random.uniform(0.5, 1.5)  # jitter: clients do not retry in step

    @staticmethod
    def _error(response: httpx.Response) -> HTTPStatusError:
        try:
            body = response.json()
            detail = (body.get("detail") or body.get("error")) if isinstance(body, dict) else None
        except (ValueError, RecursionError):
            detail = None
        retry_after = response.headers.get("retry-after", "")
        delay = min(float(retry_after), MAX_RETRY_AFTER) if retry_after.isdigit() else None
        return HTTPStatusError(
            response.status_code, str(detail or response.text)[:500], str(response.url), delay, bare=detail is None
        )

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested thousands deep
            raise ProtocolError(f"{response.url}: the answer is not JSON") from exc
        if not isinstance(body, dict):
            raise ProtocolError(f"{response.url}: the answer is not a JSON object")
        return body

    def _models(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        if not isinstance(body.get("models"), list):
            raise ProtocolError(f"{self.base_url}/models: no 'models' list in the answer")
        default = body.get("default")
        try:
            self._default_model = check_name(default)
        except ValueError:
            self._default_model = None
        return body["models"]

    def _checked_default(self) -> str:
        if self._default_model is None:
            raise ProtocolError(f"{self.base_url}/models names no valid default model; pass model=")
        return self._default_model

    @staticmethod
    def _predict_body(
        inputs: Any,
        images: Sequence[str | os.PathLike | bytes] | None,
        text: Sequence[str] | None,
        pairs: Sequence[Sequence[str]] | None,
        model: str | None,
        options: dict[str, Any],
    ) -> dict:
        kinds = {"inputs": inputs, "images": images, "text": text, "pairs": pairs}
        if sum(v is not None for v in kinds.values()) != 1:
            raise ValueError("pass exactly one of inputs=, images=, text= or pairs=")
        body: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
        if model is not None:
            body["model"] = model
        if images is not None:
            body["images"] = [
                base64.b64encode(i if isinstance(i, bytes) else Path(i).read_bytes()).decode() for i in images
            ]
        elif inputs is not None:
            body["inputs"] = inputs.tolist() if hasattr(inputs, "tolist") else inputs
        else:
            body.update(
                {
                    k: [list(p) for p in v] if k == "pairs" else list(v)
                    for k, v in kinds.items()
                    if k in ("text", "pairs") and v is not None
                }
            )
        return body

    @staticmethod
    def _push_args(package: str | os.PathLike, version: str | None) -> dict[str, Any]:
        params = {} if version is None else {"version": version}
        return {
            "content": Path(package).read_bytes(),
            "params": params,
            "headers": {"content-type": "application/octet-stream"},
        }

    def _range_headers(self, entry: Entry) -> dict[str, str]:
        partial, cached = entry.partial(), entry.cached_etag()
        if partial:
            size, etag = partial
            return {"Range": f"bytes={size}-", "If-Range": etag}
        return {"If-None-Match": cached} if cached else {}

    def _answer_deadline(self):
        """The deadline on one attempt of a request and its whole (unstreamed) answer."""
        return deadline(self.request_timeout, f"no complete answer within request_timeout={self.request_timeout} s")

    def _headers_deadline(self, download_deadline: float):
        """The deadline on a download attempt's response headers: the request's own, or the
        whole download's if that comes first."""
        left = download_deadline - time.monotonic()
        if left < self.request_timeout:
            return deadline(left, f"the download took longer than download_timeout={self.download_timeout} s")
        return deadline(self.request_timeout, f"no response headers within request_timeout={self.request_timeout} s")

    def _receiver(
        self,
        entry: Entry,
        response: httpx.Response,
        quality: int | None,
        deadline: float,
        device: str | torch.device | None,
    ) -> _Receiver | None:
        """Where a /weights answer's bytes go (decoded on ``device`` as they come, unless None);
        None for a 304 (the cached copy is current)."""
        if response.status_code == 304:
            if not (entry.path.is_file() and entry.meta.is_file()):
                raise ProtocolError("server answered 304 Not Modified, but nothing is cached")
            return None
        etag = response.headers.get("etag", "")
        sha256_of(etag)  # refuse a server we cannot verify before writing anything
        length = response.headers.get("content-length")
        if length is not None and not length.isdigit():
            raise ProtocolError(f"bad Content-Length {length[:40]!r}")
        partial = entry.partial()
        resumable = (
            response.status_code == 206
            and partial is not None
            and partial[1] == etag
            and response.headers.get("content-range", "").startswith(f"bytes {partial[0]}-")
        )
        if not resumable:
            if response.status_code == 206:  # a range of something else: start over
                entry.discard_part()
                raise httpx.RemoteProtocolError("range answer does not continue our partial file")
            entry.start_part(etag)
        start = entry.part.stat().st_size
        declared = None if length is None else int(length)
        if declared is not None and start + declared > self.max_download_bytes:
            raise ProtocolError(
                f"the package is {start + declared} bytes, over max_download_bytes={self.max_download_bytes}"
            )
        from tqdm import tqdm

        bar = tqdm(
            total=declared,
            unit="B",
            unit_scale=True,
            desc=entry.path.parent.name,
            disable=not self.progress,
            leave=False,
        )
        decoder = None
        if device is not None:  # the architecture's imports start as soon as the manifest is in
            decoder = StreamDecoder(device, max_bytes=self.max_download_bytes, on_manifest=_preload)
        return _Receiver(entry, etag, quality, start, declared, self.max_download_bytes, deadline, bar, decoder)

    @staticmethod
    def _copy(path: Path, dest: str | os.PathLike | None) -> Path:
        if dest is None:
            return path
        dest = Path(dest)
        with atomic_path(dest) as tmp:
            shutil.copyfile(path, tmp)
        return dest

    @staticmethod
    def _decode(path: Path, device: str | torch.device) -> Decoded:
        data = path.read_bytes()
        try:
            return codec.decode_package(data, device)
        except codec.CodecError as exc:
            raise CodecError(f"{path}: {exc}") from exc

    @staticmethod
    def _build(
        fetched: tuple[Path, Decoded | None],
        device: str | torch.device,
        trust_code: bool,
        compressed_domain: str | None,
    ) -> PackagedModel:
        """The model from a fetched package: decoded as it arrived, or from the cached file
        (which the compressed domain needs, for the JPEG coefficients)."""
        path, decoded = fetched
        if decoded is None or compressed_domain is not None:
            return PackagedModel.from_package(
                path.read_bytes(), device, trust_code=trust_code, compressed_domain=compressed_domain, what=str(path)
            )
        state, manifest = decoded
        return PackagedModel.build(manifest, state, device, trust_code=trust_code)


def _preload(manifest: dict[str, Any]) -> None:
    preload(manifest.get("architecture"))


class Client(_Base):
    """Synchronous client. ``transport`` lets tests use ``httpx.MockTransport`` or an ASGI app."""

    def __init__(self, base_url: str, *, transport: httpx.BaseTransport | None = None, **kwargs: Any):
        super().__init__(base_url, **kwargs)
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=self._headers,
            timeout=self._timeout,
            transport=transport,
            verify=self._verify,
        )
        install(self._http)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, url: str, retry: bool, **kwargs: Any) -> httpx.Response:
        for attempt in itertools.count(0 if retry else self.retries):
            try:
                with self._answer_deadline():
                    response = self._http.request(method, url, **kwargs)
                if response.status_code >= 400:
                    raise self._error(response)
                return response
            except (httpx.TransportError, HTTPStatusError) as exc:
                time.sleep(self._after_failure(exc, attempt, f"{method} {self.base_url}{url}"))
        raise AssertionError("unreachable")

    def models(self) -> list[dict[str, Any]]:
        return self._models(self._json(self._send("GET", "/models", retry=True)))

    def default_model(self) -> str:
        if self._default_model is None:
            self.models()
        return self._checked_default()

    def predict(
        self,
        inputs: Any = None,
        *,
        images: Sequence[str | os.PathLike | bytes] | None = None,
        text: Sequence[str] | None = None,
        pairs: Sequence[Sequence[str]] | None = None,
        model: str | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Remote inference, answered by the model's handler: raw samples (``inputs``), image
        files or bytes, texts, or text pairs; ``options`` as /predict takes them (``top_k``...).
        Retried like a GET: a prediction has no side effects."""
        return self._json(
            self._send(
                "POST", "/predict", retry=True, json=self._predict_body(inputs, images, text, pairs, model, options)
            )
        )

    def push(self, package: str | os.PathLike, name: str, version: str | None = None) -> dict[str, Any]:
        """Upload a package (``.jpw``, or safetensors with an architecture) to be served as
        ``name``; needs the server's admin token. The server validates it before replacing
        anything. Not retried."""
        return self._json(
            self._send("PUT", f"/models/{check_name(name)}", retry=False, **self._push_args(package, version))
        )

    def download(
        self,
        model: str | None = None,
        quality: int | None = None,
        dest: str | os.PathLike | None = None,
        *,
        check: bool = False,
    ) -> Path:
        """The package at ``quality``, from the local cache if the server's ETag still matches.
        ``check``: also decode it as it arrives (the tensors are then dropped), so that a package
        which does not decode raises ``CodecError`` and is never cached."""
        return self._copy(self._fetch(model, quality, "cpu" if check else None)[0], dest)

    def _fetch(
        self, model: str | None, quality: int | None, device: str | torch.device | None
    ) -> tuple[Path, Decoded | None]:
        """``(the cached package, (state_dict, manifest) decoded on device as it arrived)``; the
        second is None when the cache was current or ``device`` is None."""
        model = model or self.default_model()
        entry = Entry.of(self.cache_dir, self.base_url, model, quality)
        params = {"model": model, **({"quality": quality} if quality is not None else {})}
        deadline = time.monotonic() + self.download_timeout
        for attempt in itertools.count():
            try:
                return self._download_once(entry, params, quality, deadline, device)
            except (httpx.TransportError, HTTPStatusError) as exc:
                time.sleep(self._after_failure(exc, attempt, f"download of {model} q{quality}"))
        raise AssertionError("unreachable")

    def _download_once(
        self, entry: Entry, params: dict, quality: int | None, deadline: float, device: str | torch.device | None
    ) -> tuple[Path, Decoded | None]:
        request = self._http.build_request("GET", "/weights", params=params, headers=self._range_headers(entry))
        with self._headers_deadline(deadline):
            response = self._http.send(request, stream=True)
        with closing(response):
            if response.status_code >= 400:
                response.read()
                raise self._error(response)
            receiver = self._receiver(entry, response, quality, deadline, device)
            if receiver is None:
                return entry.path, None
            with receiver:
                for chunk in response.iter_bytes():  # as they arrive: a cut loses nothing buffered
                    receiver.feed(chunk)
                return receiver.commit()

    def state_dict(
        self, model: str | None = None, quality: int | None = None, device: str | torch.device = "cpu"
    ) -> dict[str, torch.Tensor]:
        """Dense tensors for users who bring their own module, decoded as the package arrives."""
        path, decoded = self._fetch(model, quality, device)
        return (decoded or self._decode(path, device))[0]

    def load(
        self,
        model: str | None = None,
        quality: int | None = None,
        device: str | torch.device = "cpu",
        *,
        trust_code: bool = False,
        compressed_domain: str | None = None,
    ) -> PackagedModel:
        """Download if needed, decoding each atlas as soon as its bytes have arrived; verify;
        rebuild with the package's handler (``eval()``). Nothing is used before the whole
        package's digest and the server's ETag have matched. ``trust_code``: let the package
        name code to import and run; only for packages whose author you trust (never needed for
        the built-in handlers). ``compressed_domain`` ("auto" or "all"): keep layers as JPEG
        coefficients, as the server can."""
        return self._build(self._fetch(model, quality, device), device, trust_code, compressed_domain)


class AsyncClient(_Base):
    """The same API with ``await``."""

    def __init__(self, base_url: str, *, transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any):
        super().__init__(base_url, **kwargs)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=self._headers,
            timeout=self._timeout,
            transport=transport,
            verify=self._verify,
        )
        install(self._http)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, url: str, retry: bool, **kwargs: Any) -> httpx.Response:
        for attempt in itertools.count(0 if retry else self.retries):
            try:
                with self._answer_deadline():
                    response = await self._http.request(method, url, **kwargs)
                if response.status_code >= 400:
                    raise self._error(response)
                return response
            except (httpx.TransportError, HTTPStatusError) as exc:
                await asyncio.sleep(self._after_failure(exc, attempt, f"{method} {self.base_url}{url}"))
        raise AssertionError("unreachable")

    async def models(self) -> list[dict[str, Any]]:
        return self._models(self._json(await self._send("GET", "/models", retry=True)))

    async def default_model(self) -> str:
        if self._default_model is None:
            await self.models()
        return self._checked_default()

    async def predict(
        self,
        inputs: Any = None,
        *,
        images: Sequence[str | os.PathLike | bytes] | None = None,
        text: Sequence[str] | None = None,
        pairs: Sequence[Sequence[str]] | None = None,
        model: str | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        return self._json(
            await self._send(
                "POST", "/predict", retry=True, json=self._predict_body(inputs, images, text, pairs, model, options)
            )
        )

    async def push(self, package: str | os.PathLike, name: str, version: str | None = None) -> dict[str, Any]:
        return self._json(
            await self._send("PUT", f"/models/{check_name(name)}", retry=False, **self._push_args(package, version))
        )

    async def download(
        self,
        model: str | None = None,
        quality: int | None = None,
        dest: str | os.PathLike | None = None,
        *,
        check: bool = False,
    ) -> Path:
        return self._copy((await self._fetch(model, quality, "cpu" if check else None))[0], dest)

    async def _fetch(
        self, model: str | None, quality: int | None, device: str | torch.device | None
    ) -> tuple[Path, Decoded | None]:
        model = model or await self.default_model()
        entry = Entry.of(self.cache_dir, self.base_url, model, quality)
        params = {"model": model, **({"quality": quality} if quality is not None else {})}
        deadline = time.monotonic() + self.download_timeout
        for attempt in itertools.count():
            try:
                return await self._download_once(entry, params, quality, deadline, device)
            except (httpx.TransportError, HTTPStatusError) as exc:
                await asyncio.sleep(self._after_failure(exc, attempt, f"download of {model} q{quality}"))
        raise AssertionError("unreachable")

    async def _download_once(
        self, entry: Entry, params: dict, quality: int | None, deadline: float, device: str | torch.device | None
    ) -> tuple[Path, Decoded | None]:
        request = self._http.build_request("GET", "/weights", params=params, headers=self._range_headers(entry))
        with self._headers_deadline(deadline):
            response = await self._http.send(request, stream=True)
        async with aclosing(response):
            if response.status_code >= 400:
                await response.aread()
                raise self._error(response)
            receiver = self._receiver(entry, response, quality, deadline, device)
            if receiver is None:
                return entry.path, None
            with receiver:
                async for chunk in response.aiter_bytes():
                    receiver.feed(chunk)
                return await asyncio.to_thread(receiver.commit)  # waits for the last atlases

    async def state_dict(
        self, model: str | None = None, quality: int | None = None, device: str | torch.device = "cpu"
    ) -> dict[str, torch.Tensor]:
        path, decoded = await self._fetch(model, quality, device)
        return (decoded or await asyncio.to_thread(self._decode, path, device))[0]

    async def load(
        self,
        model: str | None = None,
        quality: int | None = None,
        device: str | torch.device = "cpu",
        *,
        trust_code: bool = False,
        compressed_domain: str | None = None,
    ) -> PackagedModel:
        fetched = await self._fetch(model, quality, device)
        return await asyncio.to_thread(self._build, fetched, device, trust_code, compressed_domain)
