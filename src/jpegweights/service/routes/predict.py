"""POST /predict: our own inference endpoint, JSON or multipart (decode_request -> predict ->
encode_response, by the model's handler)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ..deps import ModelQuery, Ready, RuntimeDep, resolve_model
from ..inputs import form_request, parse_json, predict_request
from ..responses import json_response
from ..runtime import CLIENT_LEFT, INLINE_BYTES, decode_inline, off_loop, unless_client_leaves
from ..schemas import PredictRequest, openapi_body, validate

router = APIRouter(tags=["inference"])


@router.post(
    "/predict",
    dependencies=[Ready],
    openapi_extra=openapi_body(PredictRequest, {"model": "mnist-mlp", "inputs": [[0] * 784]}, form=True),
)
async def predict(request: Request, runtime: RuntimeDep, model: str | None = ModelQuery) -> Response:
    """Run a model on one request: raw samples, images (base64 in JSON, or files in a multipart
    form), or texts. The answer is the model's handler's (labels and scores, embeddings...)."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form(max_files=runtime.settings.max_samples, max_fields=runtime.settings.max_samples + 8)
        try:
            named = form.get("model") if isinstance(form.get("model"), str) else None
            files = any(hasattr(v, "read") for _, v in form.multi_items())
            kind = "images" if files else "text" if "text" in form else None
            m = resolve_model(runtime, model, named, kind=kind)
            req, _ = await form_request(form, m.handler.options)
        finally:
            await form.close()
        small = False
    else:
        raw = await request.body()
        small = len(raw) <= INLINE_BYTES
        body = validate(PredictRequest, await off_loop(small, parse_json, raw))
        kind = next((k for k in ("inputs", "images", "text", "pairs") if getattr(body, k) is not None), None)
        m = resolve_model(runtime, model, body.model, kind=kind)
        req = predict_request(body, m.handler.options)
    handler = m.handler
    x = await off_loop(decode_inline(small, req), handler.decode_request, req, runtime.limits)
    outputs = await unless_client_leaves(request.receive, runtime.infer(m, x))
    if outputs is None:
        return Response(status_code=CLIENT_LEFT)
    return json_response(
        {"model": m.name, "version": m.version, "quality": m.quality, **handler.encode_response(outputs, req)}
    )
