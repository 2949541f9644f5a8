"""POST /predict: our own JSON inference endpoint (decode_request -> predict -> encode_response)."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Request, Response

from ..deps import Ready, RuntimeDep
from ..inputs import InputError, parse_json, predict_request
from ..runtime import Runtime
from ..store import Model

router = APIRouter(tags=["inference"])

PREDICT_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "model": {"type": "string", "description": "model name (default: the server's default model)"},
                        "inputs": {"type": "array", "description": "samples of raw values 0..255 in the model's input shape (28x28 or 784 for MNIST)"},
                        "images": {"type": "array", "items": {"type": "string"}, "description": "base64 PNG or JPEG images"},
                    },
                },
                "example": {"model": "mnist-mlp", "inputs": [[0] * 784]},
            }
        },
    }
}


def resolve_model(runtime: Runtime, name: object) -> Model:
    if name is None:
        name = runtime.default_model
    if not isinstance(name, str):
        raise InputError("'model' must be a string")
    return runtime.store.get(name)


class NonFiniteOutput(ArithmeticError):
    """The model computed NaN or Infinity: a fault of the model, never sent as invalid JSON."""


def json_response(payload: dict, status: int = 200) -> Response:
    try:
        body = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    except ValueError:  # NaN/Infinity have no JSON spelling; bare NaN would break every client's parser
        raise NonFiniteOutput("the model produced NaN or Infinity for this input") from None
    return Response(body, status_code=status, media_type="application/json")


@router.post("/predict", dependencies=[Ready], openapi_extra=PREDICT_SCHEMA)
async def predict(request: Request, runtime: RuntimeDep) -> Response:
    """Class predictions and probabilities for raw samples or base64 images."""
    body = await asyncio.to_thread(parse_json, await request.body())
    model = resolve_model(runtime, body.get("model") if isinstance(body, dict) else None)
    settings = runtime.settings
    # image decoding and array building run off the event loop: a slow body never stalls others
    x = await asyncio.to_thread(predict_request, body, model.input_shape, settings.max_samples, settings.max_image_pixels)
    probabilities = await runtime.infer(model, x)
    return json_response({
        "model": model.name,
        "version": model.version,
        "quality": model.quality,
        "predictions": probabilities.argmax(1).tolist(),
        "probabilities": probabilities.tolist(),
    })  # fmt: skip
