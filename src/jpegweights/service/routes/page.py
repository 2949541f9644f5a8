"""The web page at ``/`` and what only it needs: a model's tensors and their pictures at a
quality, live figures, and the API docs with their assets served from here (no CDN)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, Query, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse

from .. import gallery
from ..deps import Quality, RuntimeDep
from ..errors import GalleryError
from ..store import Model

STATIC = Path(__file__).resolve().parents[1] / "static"
VENDOR = "/static/vendor"
router = APIRouter(tags=["page"])


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def _source(model: Model) -> tuple[gallery.Source, str | None]:
    """The float source as the gallery keys it (file, mtime), or None and why there is none
    readable: the coded pictures and the listing serve without it."""
    problem = model.source_problem()
    if problem is not None:
        return None, problem
    try:
        return (model.source, model.source.stat().st_mtime_ns), None
    except OSError:  # removed since it was opened
        return None, model.source_problem()


@router.get("/models/{name}/tensors")
async def model_tensors(name: str, runtime: RuntimeDep, quality: Quality = None) -> dict:
    """Every tensor of the model's package at ``quality`` (encoded and cached on first use):
    coding, bytes, how the page draws it, and its relative error against the float weights
    (null where the store has none)."""
    model = runtime.store.get(name)
    source, problem = await asyncio.to_thread(_source, model)
    async with runtime.store.serving(name, quality) as f:  # kept in the qualities cache while read
        rows = await asyncio.to_thread(gallery.tensors, f.path, f.etag, source)
    return {
        "model": model.name,
        "quality": f.quality,
        "package_bytes": f.size,
        "float32_bytes": f.uncompressed_bytes,
        "original": source is not None,
        "original_unavailable": problem,  # why not, where "original" is false
        "tensors": list(rows),
    }


@router.get("/models/{name}/tensors/{tensor}.png", response_class=Response)
async def tensor_picture(
    name: str,
    tensor: str,
    runtime: RuntimeDep,
    quality: Quality = None,
    page: int = Query(0, ge=0, le=1 << 31, description="which page of a large tensor (the listing gives the count)"),
    kind: gallery.Kind = Query(
        "coded",
        description=(
            "coded (as the package decodes), original (float) "
            "or difference (coded - original on the same scale, mid-grey is 0)"
        ),
    ),
) -> Response:
    """One page of a tensor as a greyscale PNG: rows as square tiles where they are squares,
    else windows of 256×256 values."""
    model = runtime.store.get(name)

    def picture() -> bytes:
        source, problem = _source(model)
        if source is None and kind != "coded":
            raise GalleryError(f"the {kind} picture needs the model's float weights: {problem}")
        original, coded = gallery.pair(f.path, f.etag, source, tensor)
        return gallery.render(original, coded, page, kind)

    async with runtime.store.serving(name, quality) as f:  # kept in the qualities cache while read
        data = await asyncio.to_thread(picture)
    return Response(
        data, media_type="image/png", headers={"Cache-Control": "no-cache", "X-Jpegweights-Quality": str(f.quality)}
    )


@router.get("/stats")
async def stats(runtime: RuntimeDep) -> dict:
    """The live figures the page shows, as cumulative counts (a client takes differences):
    requests, errors and latency per route; forward passes and samples per model."""
    return runtime.metrics.summary()


# ---------------------------------------------------------------- API docs, offline


def _root(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    root = _root(request)
    return get_swagger_ui_html(
        openapi_url=f"{root}/openapi.json", title="jpegweights - Swagger UI",
        oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
        swagger_js_url=f"{root}{VENDOR}/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{VENDOR}/swagger-ui/swagger-ui.css", swagger_favicon_url=f"{root}/static/favicon.svg",
        swagger_ui_parameters={"validatorUrl": None},  # no call to validator.swagger.io
    )  # fmt: skip


@router.get("/docs/oauth2-redirect", include_in_schema=False)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    root = _root(request)
    return get_redoc_html(
        openapi_url=f"{root}/openapi.json", title="jpegweights - ReDoc",
        redoc_js_url=f"{root}{VENDOR}/redoc/redoc.standalone.js", redoc_favicon_url=f"{root}/static/favicon.svg",
        with_google_fonts=False,
    )  # fmt: skip
