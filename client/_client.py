"""``Client`` and ``AsyncClient``: httpx-based, one shared base for everything that is not I/O.

>>> with Client("http://127.0.0.1:8000") as c:
...     model = c.load("mnist-mlp", quality=20)     # download (cached, verified), decode, rebuild
...     model(images).argmax(1)                      # raw pixels 0..255 in, logits out
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import torch

from jpegweights import codec
from .cache import Entry, default_cache_dir, sha256_of
from .errors import CodecError, HTTPStatusError, TransportError
from .model import PackagedModel

RETRY_STATUSES = {502, 503, 504}


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
    ):
        self.base_url = base_url.rstrip("/")
        # httpx builds a TLS context for every client (25 ms measured) even for http:// URLs,
        # where it is never used (redirects are not followed); skip it there unless asked.
        self._verify = verify if verify is not None else self.base_url.startswith("https://")
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.retries, self.backoff = retries, backoff
        self.progress = sys.stderr.isatty() if progress is None else progress
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = timeout
        self._default_model: str | None = None

    # ---- pure helpers shared by both clients

    def _delay(self, attempt: int) -> float:
        return self.backoff * 2**attempt

    @staticmethod
    def _error(response: httpx.Response) -> HTTPStatusError:
        try:
            body = response.json()
            detail = body.get("detail") or body.get("error") or response.text
        except ValueError:
            detail = response.text
        return HTTPStatusError(response.status_code, str(detail), str(response.url))

    @staticmethod
    def _predict_body(inputs: Any, images: Sequence[str | os.PathLike | bytes] | None, model: str | None) -> dict:
        if (inputs is None) == (images is None):
            raise ValueError("pass exactly one of inputs= or images=")
        body: dict[str, Any] = {} if model is None else {"model": model}
        if images is not None:
            body["images"] = [base64.b64encode(i if isinstance(i, bytes) else Path(i).read_bytes()).decode() for i in images]
        else:
            body["inputs"] = inputs.tolist() if hasattr(inputs, "tolist") else inputs
        return body

    def _range_headers(self, entry: Entry) -> dict[str, str]:
        partial, cached = entry.partial(), entry.cached_etag()
        if partial:
            size, etag = partial
            return {"Range": f"bytes={size}-", "If-Range": etag}
        return {"If-None-Match": cached} if cached else {}

    @staticmethod
    def _begin(entry: Entry, response: httpx.Response) -> str:
        """Prepare the part file for this response's bytes; return the ETag they must hash to."""
        etag = response.headers.get("etag", "")
        sha256_of(etag)  # refuse a server we cannot verify before writing anything
        partial = entry.partial()
        resumable = response.status_code == 206 and partial is not None and partial[1] == etag and response.headers.get("content-range", "").startswith(f"bytes {partial[0]}-")
        if not resumable:
            if response.status_code == 206:  # a range of something else: start over
                entry.discard_part()
                raise httpx.RemoteProtocolError("range answer does not continue our partial file")
            entry.start_part(etag)
        return etag

    def _bar(self, response: httpx.Response, entry: Entry):
        from tqdm import tqdm

        total = int(response.headers.get("content-length", 0)) or None
        return tqdm(total=total, unit="B", unit_scale=True, desc=entry.path.parent.name, disable=not self.progress, leave=False)

    def _give_up(self, exc: Exception, attempt: int, model: str, quality: int | None) -> None:
        """Raise ``exc`` (translated) unless a download attempt that failed so is worth retrying:
        a broken connection (the next attempt resumes with Range) or a 502/503/504."""
        if isinstance(exc, HTTPStatusError):
            if attempt == self.retries or exc.status not in RETRY_STATUSES:
                raise exc
        elif attempt == self.retries:
            raise TransportError(f"download of {model} q{quality}: {exc}") from exc

    @staticmethod
    def _copy(path: Path, dest: str | os.PathLike | None) -> Path:
        if dest is None:
            return path
        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)
        return dest

    @staticmethod
    def _decode(path: Path, device: str | torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        data = path.read_bytes()
        try:
            return codec.decode(data, device=device), codec.load_manifest(data)
        except codec.CodecError as exc:
            raise CodecError(f"{path}: {exc}") from exc


class Client(_Base):
    """Synchronous client. ``transport`` lets tests use ``httpx.MockTransport`` or an ASGI app."""

    def __init__(self, base_url: str, *, transport: httpx.BaseTransport | None = None, **kwargs: Any):
        super().__init__(base_url, **kwargs)
        self._http = httpx.Client(base_url=self.base_url, headers=self._headers, timeout=self._timeout, transport=transport, verify=self._verify)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, url: str, retry: bool, **kwargs: Any) -> httpx.Response:
        attempts = self.retries + 1 if retry else 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = self._http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                if last:
                    raise TransportError(f"{method} {self.base_url}{url}: {exc}") from exc
            else:
                if response.status_code < 400:
                    return response
                if last or response.status_code not in RETRY_STATUSES:
                    raise self._error(response)
            time.sleep(self._delay(attempt))
        raise AssertionError("unreachable")

    def models(self) -> list[dict[str, Any]]:
        body = self._send("GET", "/models", retry=True).json()
        self._default_model = body.get("default")
        return body["models"]

    def default_model(self) -> str:
        if self._default_model is None:
            self.models()
        return self._default_model

    def predict(self, inputs: Any = None, *, images: Sequence[str | os.PathLike | bytes] | None = None, model: str | None = None) -> dict[str, Any]:
        """Remote inference: raw samples (0..255) or image files/bytes. Not retried (POST)."""
        return self._send("POST", "/predict", retry=False, json=self._predict_body(inputs, images, model)).json()

    def download(self, model: str | None = None, quality: int | None = None, dest: str | os.PathLike | None = None) -> Path:
        """The package at ``quality``, from the local cache if the server's ETag still matches."""
        model = model or self.default_model()
        entry = Entry.of(self.cache_dir, self.base_url, model, quality)
        params = {"model": model, **({"quality": quality} if quality is not None else {})}
        for attempt in range(self.retries + 1):
            try:
                return self._copy(self._download_once(entry, params, quality), dest)
            except (httpx.TransportError, HTTPStatusError) as exc:
                self._give_up(exc, attempt, model, quality)
                time.sleep(self._delay(attempt))
        raise AssertionError("unreachable")

    def _download_once(self, entry: Entry, params: dict, quality: int | None) -> Path:
        with self._http.stream("GET", "/weights", params=params, headers=self._range_headers(entry)) as response:
            if response.status_code == 304:
                return entry.path
            if response.status_code >= 400:
                response.read()
                raise self._error(response)
            etag = self._begin(entry, response)
            with open(entry.part, "ab") as f, self._bar(response, entry) as bar:
                for chunk in response.iter_bytes():  # as they arrive: a cut loses nothing buffered
                    f.write(chunk)
                    bar.update(len(chunk))
        return entry.commit(etag, quality)

    def state_dict(self, model: str | None = None, quality: int | None = None, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """Dense tensors for users who bring their own module."""
        return self._decode(self.download(model, quality), device)[0]

    def load(self, model: str | None = None, quality: int | None = None, device: str | torch.device = "cpu") -> PackagedModel:
        """Download if needed, verify, decode, rebuild from the package's architecture, ``eval()``."""
        state, manifest = self._decode(self.download(model, quality), device)
        return PackagedModel.build(manifest, state, device)


class AsyncClient(_Base):
    """The same API with ``await``."""

    def __init__(self, base_url: str, *, transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any):
        super().__init__(base_url, **kwargs)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self._headers, timeout=self._timeout, transport=transport, verify=self._verify)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, url: str, retry: bool, **kwargs: Any) -> httpx.Response:
        attempts = self.retries + 1 if retry else 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = await self._http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                if last:
                    raise TransportError(f"{method} {self.base_url}{url}: {exc}") from exc
            else:
                if response.status_code < 400:
                    return response
                if last or response.status_code not in RETRY_STATUSES:
                    raise self._error(response)
            await asyncio.sleep(self._delay(attempt))
        raise AssertionError("unreachable")

    async def models(self) -> list[dict[str, Any]]:
        body = (await self._send("GET", "/models", retry=True)).json()
        self._default_model = body.get("default")
        return body["models"]

    async def default_model(self) -> str:
        if self._default_model is None:
            await self.models()
        return self._default_model

    async def predict(self, inputs: Any = None, *, images: Sequence[str | os.PathLike | bytes] | None = None, model: str | None = None) -> dict[str, Any]:
        return (await self._send("POST", "/predict", retry=False, json=self._predict_body(inputs, images, model))).json()

    async def download(self, model: str | None = None, quality: int | None = None, dest: str | os.PathLike | None = None) -> Path:
        model = model or await self.default_model()
        entry = Entry.of(self.cache_dir, self.base_url, model, quality)
        params = {"model": model, **({"quality": quality} if quality is not None else {})}
        for attempt in range(self.retries + 1):
            try:
                return self._copy(await self._download_once(entry, params, quality), dest)
            except (httpx.TransportError, HTTPStatusError) as exc:
                self._give_up(exc, attempt, model, quality)
                await asyncio.sleep(self._delay(attempt))
        raise AssertionError("unreachable")

    async def _download_once(self, entry: Entry, params: dict, quality: int | None) -> Path:
        async with self._http.stream("GET", "/weights", params=params, headers=self._range_headers(entry)) as response:
            if response.status_code == 304:
                return entry.path
            if response.status_code >= 400:
                await response.aread()
                raise self._error(response)
            etag = self._begin(entry, response)
            with open(entry.part, "ab") as f, self._bar(response, entry) as bar:
                async for chunk in response.aiter_bytes():
                    f.write(chunk)
                    bar.update(len(chunk))
        return entry.commit(etag, quality)

    async def state_dict(self, model: str | None = None, quality: int | None = None, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        return self._decode(await self.download(model, quality), device)[0]

    async def load(self, model: str | None = None, quality: int | None = None, device: str | torch.device = "cpu") -> PackagedModel:
        state, manifest = self._decode(await self.download(model, quality), device)
        return PackagedModel.build(manifest, state, device)
