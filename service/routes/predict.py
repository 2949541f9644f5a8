"""POST /predict: our own JSON inference endpoint (decode_request -> predict -> encode_response)."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Request, Response

from ..deps import Ready, RuntimeDep
from ..inputs import parse_json, predict_request
from ..runtime import Runtime
from ..schemas import PredictRequest, openapi_body, validate
from ..store import Model

router = APIRouter(tags=["inference"])

def resolve_model(runtime: Runtime, name: str | None) -> Model:
    return runtime.store.get(runtime.default_model if name is None else name)


class NonFiniteOutput(ArithmeticError):
    """The model computed NaN or Infinity: a fault of the model, never sent as invalid JSON."""


def json_response(payload: dict, status: int = 200) -> Response:
    try:
        body = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    except ValueError:  # NaN/Infinity have no JSON spelling; bare NaN would break every client's parser
        raise NonFiniteOutput("the model produced NaN or Infinity for this input") from None
    return Response(body, status_code=status, media_type="application/json")


@router.post("/predict", dependencies=[Ready], openapi_extra=openapi_body(PredictRequest, {"model": "mnist-mlp", "inputs": [[0] * 784]}))
async def predict(request: Request, runtime: RuntimeDep) -> Response:
    """Class predictions and probabilities for raw samples or base64 images."""
    body = validate(PredictRequest, await asyncio.to_thread(parse_json, await request.body()), 422)
    model = resolve_model(runtime, body.model)
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
