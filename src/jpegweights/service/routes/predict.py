"""POST /predict: our own inference endpoint, JSON or multipart (decode_request -> predict ->
encode_response, by the model's handler)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Query, Request, Response

from jpegweights.handlers import Limits

from ..deps import Ready, RuntimeDep
from ..inputs import InputError, form_request, parse_json, predict_request
from ..runtime import INLINE_BYTES, Runtime, off_loop
from ..schemas import PredictRequest, openapi_body, validate
from ..store import Model

router = APIRouter(tags=["inference"])
ModelQuery = Query(None, description="model name (default: the server's default model)")


def resolve_model(runtime: Runtime, *names: str | None) -> Model:
    """The model a request names (in its URL, its body, or both: then they must agree)."""
    given = {n for n in names if n is not None}
    if len(given) > 1:
        raise InputError(f"the request names two models: {sorted(given)}", 400)
    return runtime.store.get(given.pop() if given else runtime.default_model)


class NonFiniteOutput(ArithmeticError):
    """The model computed NaN or Infinity: a fault of the model, never sent as invalid JSON."""


def json_response(payload: dict, status: int = 200) -> Response:
    try:
        body = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    except ValueError:  # NaN/Infinity have no JSON spelling; bare NaN would break every client's parser
        raise NonFiniteOutput("the model produced NaN or Infinity for this input") from None
    return Response(body, status_code=status, media_type="application/json")


def limits(runtime: Runtime) -> Limits:
    return Limits(runtime.settings.max_samples, runtime.settings.max_image_pixels)


@router.post("/predict", dependencies=[Ready], openapi_extra=openapi_body(PredictRequest, {"model": "mnist-mlp", "inputs": [[0] * 784]}, form=True))
async def predict(request: Request, runtime: RuntimeDep, model: str | None = ModelQuery) -> Response:
    """Run a model on one request: raw samples, images (base64 in JSON, or files in a multipart
    form), or texts. The answer is the model's handler's (labels and scores, embeddings...)."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form(max_files=runtime.settings.max_samples, max_fields=runtime.settings.max_samples + 8)
        try:
            m = resolve_model(runtime, model, form.get("model") if isinstance(form.get("model"), str) else None)
            req, _ = await form_request(form, m.handler.options)
        finally:
            await form.close()
        small = False
    else:
        raw = await request.body()
        small = len(raw) <= INLINE_BYTES
        body = validate(PredictRequest, await off_loop(small, parse_json, raw), 422)
        m = resolve_model(runtime, model, body.model)
        req = predict_request(body, m.handler.options)
    handler = m.handler
    x = await off_loop(small and req.images is None, handler.decode_request, req, limits(runtime))
    outputs = await runtime.infer(m, x)
    return json_response({"model": m.name, "version": m.version, "quality": m.quality, **handler.encode_response(outputs, req)})
