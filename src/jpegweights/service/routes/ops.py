"""Operations: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..deps import RuntimeDep
from ..responses import json_response

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(runtime: RuntimeDep) -> Response:
    body = {"ready": runtime.ready, "models": sorted(runtime.store.models), "failed": runtime.store.failed}
    if not runtime.ready:
        body["reason"] = runtime.unready  # e.g. no models in the model folder, not "still loading" forever
    return json_response(body, 200 if runtime.ready else 503)


@router.get("/metrics")
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)
