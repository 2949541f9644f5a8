"""The Open Inference Protocol v2 (KServe / Triton REST): health, metadata, inference."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response

from .. import __version__
from ..deps import RuntimeDep
from ..inputs import InputError, parse_json, v2_request
from ..schemas import V2InferRequest, openapi_body, validate
from ..store import ModelNotFound
from .predict import json_response

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])
OUTPUTS = ("probabilities", "predictions")


@router.get("")
async def server_metadata() -> dict:
    return {"name": "jpegweights", "version": __version__, "extensions": []}


@router.get("/health/live")
async def live() -> dict:
    return {"live": True}


@router.get("/health/ready")
async def ready(runtime: RuntimeDep) -> Response:
    return json_response({"ready": runtime.ready}, 200 if runtime.ready else 400)


def _model(runtime, name: str, version: str | None):
    model = runtime.store.get(name)
    if version is not None and version != model.version:
        raise ModelNotFound(f"model {name!r} has version {model.version!r}, not {version!r}")
    return model


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}")
async def model_metadata(name: str, runtime: RuntimeDep, version: str | None = None) -> dict:
    model = _model(runtime, name, version)
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": "pytorch_jpegweights",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, *model.input_shape]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, model.num_classes]},
            {"name": "predictions", "datatype": "INT64", "shape": [-1]},
        ],
    }


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready")
async def model_ready(name: str, runtime: RuntimeDep, version: str | None = None) -> dict:
    _model(runtime, name, version)
    return {"name": name, "ready": runtime.ready}


INFER_EXAMPLE = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [0] * 784}]}


@router.post("/models/{name}/infer", openapi_extra=openapi_body(V2InferRequest, INFER_EXAMPLE))
@router.post("/models/{name}/versions/{version}/infer", openapi_extra=openapi_body(V2InferRequest, INFER_EXAMPLE))
async def infer(name: str, request: Request, runtime: RuntimeDep, version: str | None = None) -> Response:
    model = _model(runtime, name, version)
    body = validate(V2InferRequest, await asyncio.to_thread(parse_json, await request.body()), 400)
    x, wanted, request_id = await asyncio.to_thread(v2_request, body, model.input_shape, runtime.settings.max_samples)
    unknown = set(wanted or ()) - set(OUTPUTS)
    if unknown:
        raise InputError(f"unknown output(s) {sorted(unknown)}; this model has {list(OUTPUTS)}", 400)
    probabilities = await runtime.infer(model, x)
    n = len(probabilities)
    tensors = {
        "probabilities": {"name": "probabilities", "datatype": "FP32", "shape": list(probabilities.shape), "data": probabilities.reshape(-1).tolist()},
        "predictions": {"name": "predictions", "datatype": "INT64", "shape": [n], "data": probabilities.argmax(1).tolist()},
    }
    payload = {"model_name": model.name, "model_version": model.version, "outputs": [tensors[k] for k in (wanted or OUTPUTS)]}
    if request_id is not None:
        payload["id"] = request_id
    return json_response(payload)
