"""``create_app(settings)``: the FastAPI app. Models load in the lifespan, never at import time."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from . import __version__
from .deps import require_token
from .errors import STATUS, message_of, status_of
from .middleware import ServiceMiddleware
from .routes import manage, models, ops, page, predict, v2, weights
from .runtime import Runtime
from .schemas import add_components
from .settings import Settings


async def answer_error(request: Request, exc: Exception) -> JSONResponse:
    """Any exception in ``errors.STATUS`` as its status and message (and its headers, where it has some)."""
    # the v2 protocol's error object is {"error": ...}; ours is FastAPI's {"detail": ...}
    key = "error" if request.url.path.startswith("/v2") else "detail"
    headers = exc.headers if isinstance(exc, HTTPException) else getattr(exc, "headers", None)  # Retry-After
    return JSONResponse({key: message_of(exc)}, status_code=status_of(exc), headers=headers)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    runtime = Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await runtime.start()
        yield
        await runtime.stop()

    app = FastAPI(
        title="jpegweights",
        version=__version__,
        lifespan=lifespan,
        description="Models stored and delivered as JPEG-coded weights.",
        docs_url=None,
        redoc_url=None,  # routes/page.py serves both with their assets from here, so they work offline
        dependencies=[Depends(require_token)],  # every route; deps.OPEN_PATHS are the exceptions
    )
    app.state.runtime = runtime
    app.add_middleware(
        ServiceMiddleware, max_body_bytes=settings.max_body_bytes, max_upload_bytes=settings.max_upload_bytes
    )
    for router in (predict.router, v2.router, weights.router, manage.router, models.router, ops.router, page.router):
        app.include_router(router)
    app.mount(
        "/static", StaticFiles(directory=page.STATIC), name="static"
    )  # the page's files: no model or weight, open like /docs

    add_components(app)

    for exc_class in STATUS:
        app.add_exception_handler(exc_class, answer_error)

    return app
