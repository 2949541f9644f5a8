"""GET /weights: the compact package at any quality, cacheable and resumable."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from ..deps import ModelDep, Quality, Ready, RuntimeDep

router = APIRouter(tags=["weights"])


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


@router.get("/weights", dependencies=[Ready])
async def weights(request: Request, runtime: RuntimeDep, m: ModelDep, quality: Quality = None) -> Response:
    """The ``.jpw`` package. Strong ETag (SHA-256 of the bytes); ``If-None-Match`` gives 304,
    ``Range: bytes=a-b`` gives 206 so downloads resume."""
    f = await runtime.store.weights(m.name, quality)
    headers = weight_headers(f, m)
    if _matches(request.headers.get("if-none-match"), f.etag):
        return Response(status_code=304, headers=headers)
    response = FileResponse(
        f.path, media_type="application/vnd.jpegweights", headers=headers, filename=f"{m.name}-q{f.quality}.jpw"
    )
    if "range" not in request.headers:
        runtime.metrics.weights_bytes.labels(m.name, str(f.quality)).inc(f.size)
        m.bytes_served[f.quality] = m.bytes_served.get(f.quality, 0) + f.size
    return response
