"""GET /models, /models/{name} and a tensor's JPEG atlas as an image."""

from __future__ import annotations

from fastapi import APIRouter, Response

from jpegweights.handlers.architectures import title

from ..deps import RuntimeDep
from ..store import Model
from .weights import Quality

router = APIRouter(tags=["models"])


def describe(model: Model) -> dict:
    return {
        "name": model.name,
        "version": model.version,
        "quality": model.quality,
        "device": model.device,
        "handler": model.handler.name,
        "architecture": title(model.manifest["architecture"]),
        **model.handler.describe(),
        "inputs": [s.to_json() for s in model.handler.signature.inputs],
        "outputs": [s.to_json() for s in model.handler.signature.outputs],
        "options": sorted(model.handler.options),
        "parameters": model.uncompressed_bytes // 4,
        "uncompressed_bytes": model.uncompressed_bytes,
        "package_bytes": model.package.stat().st_size,
        "other_qualities": model.source is not None,
        "decode_ms": round(model.decode_seconds * 1e3, 3),
        "max_batch_size": model.max_batch_size,
        "resident_weight_bytes": model.resident_bytes,
        "compressed_domain": model.compressed_domain,
        "bytes_served": {str(q): n for q, n in sorted(model.bytes_served.items())},
        "accuracy": {str(q): r["value"] for q, r in model.report.get("qualities", {}).items()} if model.report.get("metric") == "accuracy" else {},
        "fidelity": model.report,
    }


@router.get("/models")
async def list_models(runtime: RuntimeDep) -> dict:
    return {"default": runtime.default_model, "models": [describe(m) for m in runtime.store.models.values()], "failed": runtime.store.failed}


@router.get("/models/{name}")
async def get_model(name: str, runtime: RuntimeDep) -> dict:
    return describe(runtime.store.get(name))


@router.get("/models/{name}/weights/{tensor}.jpg", response_class=Response)
async def tensor_image(name: str, tensor: str, runtime: RuntimeDep, quality: Quality = None, atlas: int = 0) -> Response:
    """A tensor's JPEG atlas exactly as stored in the package: a browser can show the layer."""
    data = await runtime.store.tile_image(name, tensor, quality, atlas)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=86400"})
