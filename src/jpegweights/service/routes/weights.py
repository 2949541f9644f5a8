"""GET and HEAD /weights: the compact package at any quality, cacheable and resumable."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse
from starlette.types import Message, Receive, Scope, Send

from ..deps import ModelDep, Quality, Ready, RuntimeDep
from ..runtime import CLIENT_LEFT, unless_client_leaves

router = APIRouter(tags=["weights"])
log = logging.getLogger("jpegweights.service")


def weight_headers(f, model) -> dict[str, str]:
    return {
        "ETag": f.etag,
        "Cache-Control": "public, max-age=86400",
        "Accept-Ranges": "bytes",
        "X-Jpegweights-Quality": str(f.quality),
        "X-Jpegweights-Model-Version": model.version,
        "X-Uncompressed-Bytes": str(f.uncompressed_bytes),
    }


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tags or etag in tags


class HeldFileResponse(FileResponse):
    """A ``FileResponse`` that calls ``release`` once sent, or once sending failed: the qualities
    cache keeps the file until then. A client that takes no bytes for ``stall_s`` is cut off
    (the connection closed), so that a stalled reader holds neither the file nor the connection
    for longer than that."""

    def __init__(self, *args, release: Callable[[], None], stall_s: float, **kwargs):
        super().__init__(*args, **kwargs)
        self._release, self._stall_s = release, stall_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sent = 0

        async def bounded(message: Message) -> None:
            nonlocal sent
            async with asyncio.timeout(self._stall_s):
                await send(message)
            sent += len(message.get("body", b""))

        try:
            await super().__call__(scope, receive, bounded)
        except TimeoutError:  # the server closes the connection: the response is unfinished
            log.info(json.dumps({"event": "download_stalled", "path": scope["path"], "sent": sent, "s": self._stall_s}))
        finally:
            self._release()


@router.get("/weights", dependencies=[Ready])
@router.head("/weights", dependencies=[Ready], operation_id="weights_head", summary="Weights' headers, no body")
async def weights(request: Request, runtime: RuntimeDep, m: ModelDep, quality: Quality = None) -> Response:
    """The ``.jpw`` package. Strong ETag (SHA-256 of the bytes); ``If-None-Match`` gives 304,
    ``Range: bytes=a-b`` gives 206 so downloads resume; HEAD gives the same headers, no body.
    Another quality is encoded first (``JPEGWEIGHTS_ENCODE_WORKERS`` at once, ``ENCODE_QUEUE``
    waiting, then 503 with Retry-After); a client that leaves meanwhile cancels its wait."""
    store = runtime.store
    f = await unless_client_leaves(request.receive, store.weights(m.name, quality, hold=True))
    if f is None:
        return Response(status_code=CLIENT_LEFT)
    headers = weight_headers(f, m)
    if _matches(request.headers.get("if-none-match"), f.etag):
        store.release(f)
        return Response(status_code=304, headers=headers)
    response = HeldFileResponse(
        f.path, media_type="application/vnd.jpegweights", headers=headers, filename=f"{m.name}-q{f.quality}.jpw",
        release=lambda: store.release(f), stall_s=runtime.settings.send_stall_s,
    )  # fmt: skip
    if "range" not in request.headers and request.method == "GET":
        runtime.metrics.weights_bytes.labels(m.name, str(f.quality)).inc(f.size)
        m.bytes_served[f.quality] = m.bytes_served.get(f.quality, 0) + f.size
    return response
