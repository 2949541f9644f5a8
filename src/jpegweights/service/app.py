"""``create_app(settings)``: the FastAPI app. Models load in the lifespan, never at import time."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from jpegweights.codec import CodecError

from . import __version__
from .deps import require_token
from .inputs import InputError
from .middleware import ServiceMiddleware
from .gallery import GalleryError
from .routes import manage, models, ops, page, predict, v2, weights
from .routes.predict import NonFiniteOutput
from .runtime import InferenceTimeout, Runtime
from .schemas import add_components
from .settings import Settings
from .store import ModelNotFound, QualityUnavailable, StoreError


def _error(status: int, message: str, request: Request) -> JSONResponse:
    # the v2 protocol's error object is {"error": ...}; ours is FastAPI's {"detail": ...}
    key = "error" if request.url.path.startswith("/v2") else "detail"
    return JSONResponse({key: message}, status_code=status)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    runtime = Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await runtime.start()
        yield
        await runtime.stop()

    app = FastAPI(
        title="jpegweights", version=__version__, lifespan=lifespan, description="Models stored and delivered as JPEG-coded weights.",
        docs_url=None, redoc_url=None,  # routes/page.py serves both with their assets from here, so they work offline
        dependencies=[Depends(require_token)],  # every route; deps.OPEN_PATHS are the exceptions
    )
    app.state.runtime = runtime
    app.add_middleware(ServiceMiddleware, max_body_bytes=settings.max_body_bytes, max_upload_bytes=settings.max_upload_bytes)
    for router in (predict.router, v2.router, weights.router, manage.router, models.router, ops.router, page.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=page.STATIC), name="static")  # the page's files: no model or weight, open like /docs

    add_components(app)

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError):
        return _error(exc.status, str(exc), request)

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError):  # e.g. a model name that is not a plain name
        return _error(422, str(exc), request)

    @app.exception_handler(ModelNotFound)
    @app.exception_handler(QualityUnavailable)
    @app.exception_handler(GalleryError)
    async def not_found(request: Request, exc: LookupError):
        return _error(404, str(exc.args[0]), request)

    @app.exception_handler(InferenceTimeout)
    async def timeout(request: Request, exc: InferenceTimeout):
        return _error(504, str(exc), request)

    @app.exception_handler(NonFiniteOutput)
    async def non_finite(request: Request, exc: NonFiniteOutput):  # the model's fault, not the request's
        return _error(500, str(exc), request)

    @app.exception_handler(CodecError)
    async def codec_error(request: Request, exc: CodecError):  # a broken package on disk: our fault, said plainly
        return _error(500, f"stored package is unreadable: {exc}", request)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        response = _error(exc.status_code, str(exc.detail), request)
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return _error(422, "; ".join(parts), request)

    return app
