"""The Open Inference Protocol v2 (KServe / Triton REST): health, metadata, inference, with
the binary tensor data extension (tritonclient's default) for requests and responses."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from jpegweights.handlers import RequestError, RequestTooLarge

from .. import __version__
from ..deps import RuntimeDep
from ..errors import BadRequest, InputTooLarge, ModelNotFound
from ..inputs import parse_json, split_binary, v2_outputs, v2_request
from ..responses import json_bytes, json_response
from ..runtime import CLIENT_LEFT, INLINE_BYTES, decode_inline, off_loop, unless_client_leaves
from ..schemas import V2InferRequest, openapi_body, validate

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])
HEADER_LENGTH = "Inference-Header-Content-Length"


@router.get("")
async def server_metadata() -> dict:
    return {"name": "jpegweights", "version": __version__, "extensions": ["binary_tensor_data", "model_repository"]}


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
    """The model's signature: a request sends one of its inputs (an image model takes encoded
    images as ``image`` BYTES or pixels as ``input``)."""
    model = _model(runtime, name, version)
    signature = model.handler.signature
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": "pytorch_jpegweights",
        "inputs": [s.to_json() for s in signature.inputs],
        "outputs": [s.to_json() for s in signature.outputs],
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
    handler = model.handler
    raw = await request.body()
    small = len(raw) <= INLINE_BYTES
    head, binary = split_binary(raw, request.headers.get(HEADER_LENGTH))
    body = validate(V2InferRequest, await off_loop(small, parse_json, head), BadRequest)
    req = v2_request(body, binary, handler.signature)
    try:
        x = await off_loop(decode_inline(small, req), handler.decode_request, req, runtime.limits)
    except RequestError as exc:  # the protocol answers bad inputs with 400 (too large ones stay 413)
        raise (InputTooLarge if isinstance(exc, RequestTooLarge) else BadRequest)(str(exc)) from None
    outputs = await unless_client_leaves(request.receive, runtime.infer(model, x))
    if outputs is None:
        return Response(status_code=CLIENT_LEFT)
    result, blobs = v2_outputs(handler.output_arrays(outputs), body)
    payload = {"model_name": model.name, "model_version": model.version, **result}
    if body.id is not None:
        payload["id"] = body.id
    if not blobs:
        return json_response(payload)
    text = json_bytes(payload)
    return Response(
        text + b"".join(blobs), media_type="application/octet-stream", headers={HEADER_LENGTH: str(len(text))}
    )
