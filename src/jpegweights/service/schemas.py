"""Request bodies as pydantic models: their structure is validated here and documented in the
OpenAPI schema; what depends on the model (shapes, value ranges) is checked in ``inputs``.

Bodies are first parsed by ``inputs.parse_json`` (bounded nesting and integer length: FastAPI's
own parser would crash on 10,000-deep JSON), then validated with ``model_validate``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError, model_validator

from .errors import InputError

V2Datatype = Literal[
    "FP32", "FP64", "FP16", "UINT8", "INT8", "INT16", "INT32", "INT64", "UINT16", "UINT32", "UINT64", "BOOL", "BYTES"
]
PositiveInt = Annotated[int, Field(strict=True, gt=0)]


class PredictRequest(BaseModel):
    """``POST /predict`` as JSON: one kind of input, for one model; what each kind means is
    the model's handler's (``GET /models/{name}`` says which it takes)."""

    model_config = ConfigDict(extra="forbid")
    model: StrictStr | None = Field(
        None, description="model name (default: the server's default model; or ?model= in the URL)"
    )
    inputs: list[Any] | None = Field(
        None,
        description="raw samples in the model's input shape (image models: pixels 0..255, e.g. 28x28 or 784 for MNIST)",
    )
    images: list[StrictStr] | None = Field(None, description="base64 JPEG, PNG or WebP files (image models)")
    text: list[StrictStr] | None = Field(None, description="texts to embed (text models)")
    pairs: list[Annotated[list[StrictStr], Field(min_length=2, max_length=2)]] | None = Field(
        None, description="[text, text] pairs: their cosine similarities (text models)"
    )
    top_k: Annotated[int, Field(strict=True, ge=1)] | None = Field(
        None, description="image models: how many labels per image (default: the package's)"
    )
    probabilities: StrictBool | None = Field(None, description="image models: also every class's probability")
    truncate: StrictBool | None = Field(
        None, description="text models: cut texts over the token limit (default true) or refuse them (false)"
    )

    @model_validator(mode="after")
    def _one_kind(self) -> PredictRequest:
        if sum(v is not None for v in (self.inputs, self.images, self.text, self.pairs)) != 1:
            raise ValueError("send exactly one of 'inputs' (raw values), 'images' (base64 files), 'text' or 'pairs'")
        return self


class V2Tensor(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr
    shape: list[PositiveInt] = Field(min_length=1)
    datatype: V2Datatype
    data: list[Any] | None = Field(
        None, description="row-major values; absent when parameters.binary_data_size gives them in binary"
    )
    parameters: dict[str, Any] | None = None


class V2Output(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    """Open Inference Protocol v2 ``infer`` request: JSON tensors, or with the binary tensor
    data extension (``Inference-Header-Content-Length``) their bytes after the JSON."""

    model_config = ConfigDict(extra="forbid")
    id: StrictStr | None = None
    inputs: list[V2Tensor] = Field(
        min_length=1, max_length=1, description="one input tensor (the model's metadata lists which)"
    )
    outputs: list[V2Output] | None = None
    parameters: dict[str, Any] | None = None


def validate(model: type[BaseModel], body: Any, error: type[InputError] = InputError) -> Any:
    """``model.model_validate(body)``, its errors as one ``error`` naming each field (the v2
    protocol passes ``BadRequest``: it answers every bad input with 400).

    >>> validate(PredictRequest, {"inputs": [[0] * 784]}).inputs[0][:2]
    [0, 0]
    """
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        parts = []
        for e in exc.errors(include_url=False, include_input=False)[:5]:
            where = ".".join(str(p) for p in e["loc"])
            parts.append(f"{where}: {e['msg']}" if where else e["msg"].removeprefix("Value error, "))
        raise error("; ".join(parts)) from None


COMPONENTS: dict[str, Any] = {}  # nested models' schemas, added to the app's OpenAPI components


FORM_SCHEMA = {
    "type": "object",
    "properties": {
        "file": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "image files (any field name but the ones below)",
        },
        "text": {"type": "array", "items": {"type": "string"}},
        "model": {"type": "string"},
        "top_k": {"type": "integer", "minimum": 1},
        "probabilities": {"type": "string", "enum": ["true", "false"]},
        "truncate": {"type": "string", "enum": ["true", "false"]},
    },
}


def openapi_body(model: type[BaseModel], example: dict, form: bool = False) -> dict:
    """``openapi_extra`` for a route that parses its body itself: the model's schema, with
    nested models as ``#/components/schemas`` references (``add_components`` adds them), and
    with ``form`` the multipart form it also takes."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    COMPONENTS.update(schema.pop("$defs", {}))
    content: dict[str, Any] = {"application/json": {"schema": schema, "example": example}}
    if form:
        content["multipart/form-data"] = {"schema": FORM_SCHEMA}
    return {"requestBody": {"required": True, "content": content}}


def add_components(app: Any) -> None:
    default = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = default()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(COMPONENTS)
        return app.openapi_schema

    app.openapi = openapi
