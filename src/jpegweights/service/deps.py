"""Dependencies and parameters shared by the routes.

@router.get("/weights")
async def weights(m: ModelDep, quality: Quality = None): ...
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request

from .errors import BadRequest
from .runtime import Runtime
from .store import Model


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]

Quality = Annotated[int | None, Query(ge=1, le=100, description="JPEG quality 1..100 (default: the stored package's)")]
ModelQuery = Query(None, description="model name (default: the server's default model)")


def resolve_model(runtime: Runtime, *names: str | None, kind: str | None = None) -> Model:
    """The model a request names (in its URL, its body, or both: then they must agree); if it
    names none, the one ``Runtime.model_for`` picks for its input ``kind`` (``inputs``,
    ``images``, ``text``, ``pairs``; None for a request that is not a prediction)."""
    given = {n for n in names if n is not None}
    if len(given) > 1:
        raise BadRequest(f"the request names two models: {sorted(given)}")
    return runtime.store.get(given.pop() if given else runtime.model_for(kind))


async def get_model(runtime: RuntimeDep, model: str | None = ModelQuery) -> Model:
    return resolve_model(runtime, model)


ModelDep = Annotated[Model, Depends(get_model)]  # the model ?model= names, or the default one


# Open even with a token: probes (orchestrators call them without credentials), the API's own
# description and the web page's HTML (/static too, which is mounted outside these
# dependencies), which hold no model or weight: the page asks for the token and sends it with
# every call. /metrics and /stats join them unless protect_metrics.
OPEN_PATHS = frozenset(
    {
        "/",
        "/healthz",
        "/readyz",
        "/v2/health/live",
        "/v2/health/ready",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
    }
)


def _bearer(request: Request) -> str | None:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return given if scheme.lower() == "bearer" else None


def _matches(given: str | None, token: str | None) -> bool:
    return given is not None and token is not None and hmac.compare_digest(given.encode(), token.encode())


def _unauthorized() -> HTTPException:
    return HTTPException(
        401,
        "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
        headers={"WWW-Authenticate": "Bearer"},
    )


async def require_token(request: Request, runtime: RuntimeDep) -> None:
    """With a token or an admin token configured, every route needs one of them (constant-time
    compares), except OPEN_PATHS and, unless protect_metrics, /metrics and /stats."""
    settings = runtime.settings
    path = request.url.path
    if (
        (settings.token is None and settings.admin_token is None)
        or path in OPEN_PATHS
        or (path in ("/metrics", "/stats") and not settings.protect_metrics)
    ):
        return
    given = _bearer(request)
    if not (_matches(given, settings.token) or _matches(given, settings.admin_token)):
        raise _unauthorized()


async def require_admin(request: Request, runtime: RuntimeDep) -> None:
    """Model management: only with the admin token, and off when none is configured."""
    if runtime.settings.admin_token is None:
        raise HTTPException(403, "model management is off: start the server with JPEGWEIGHTS_ADMIN_TOKEN set")
    if not _matches(_bearer(request), runtime.settings.admin_token):
        raise _unauthorized()


Admin = Depends(require_admin)


async def require_ready(runtime: RuntimeDep) -> None:
    if not runtime.ready:
        raise HTTPException(503, runtime.unready)


Ready = Depends(require_ready)
