"""Dependencies shared by the routes."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from .runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


# Open even with a token: probes (orchestrators call them without credentials) and the API's
# own description, which holds no model or weight. /metrics joins them unless protect_metrics.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


async def require_token(request: Request, runtime: RuntimeDep) -> None:
    """Bearer-token check on every route, when a token is configured (constant-time compare)."""
    settings = runtime.settings
    path = request.url.path
    if settings.token is None or path in OPEN_PATHS or (path == "/metrics" and not settings.protect_metrics):
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), settings.token.encode()):
        raise HTTPException(401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')", headers={"WWW-Authenticate": "Bearer"})


async def require_ready(runtime: RuntimeDep) -> None:
    if not runtime.ready:
        raise HTTPException(503, "models are still loading")


Ready = Depends(require_ready)
