"""Dependencies shared by the routes."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from .runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def require_token(request: Request, runtime: RuntimeDep) -> None:
    """Bearer-token check for inference, when a token is configured (constant-time compare)."""
    token = runtime.settings.token
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPException(401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')", headers={"WWW-Authenticate": "Bearer"})


Authorized = Depends(require_token)


async def require_ready(runtime: RuntimeDep) -> None:
    if not runtime.ready:
        raise HTTPException(503, "models are still loading")


Ready = Depends(require_ready)
