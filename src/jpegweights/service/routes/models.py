"""GET /models, /models/{name} and a tensor's JPEG atlas as an image."""

from __future__ import annotations

from fastapi import APIRouter, Response

from ..deps import Quality, RuntimeDep
from ..responses import describe

router = APIRouter(tags=["models"])


@router.get("/models")
async def list_models(runtime: RuntimeDep) -> dict:
    return {
        "default": runtime.default_model,
        "models": [describe(m) for m in runtime.store.models.values()],
        "failed": runtime.store.failed,
    }


@router.get("/models/{name}")
async def get_model(name: str, runtime: RuntimeDep) -> dict:
    return describe(runtime.store.get(name))


@router.get("/models/{name}/weights/{tensor}.jpg", response_class=Response)
async def tensor_image(
    name: str, tensor: str, runtime: RuntimeDep, quality: Quality = None, atlas: int = 0
) -> Response:
    """A tensor's JPEG atlas exactly as stored in the package: a browser can show the layer."""
    data = await runtime.store.tile_image(name, tensor, quality, atlas)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=86400"})
