"""Request bodies as pydantic models: their structure is validated here and documented in the
OpenAPI schema; what depends on the model (shapes, value ranges) is checked in ``inputs``.

Bodies are first parsed by ``inputs.parse_json`` (bounded nesting and integer length: FastAPI's
own parser would crash on 10,000-deep JSON), then validated with ``model_validate``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, model_validator

from .inputs import InputError

V2Datatype = Literal["FP32", "FP64", "FP16", "UINT8", "INT8", "INT16", "INT32", "INT64", "UINT16", "UINT32", "UINT64"]
PositiveInt = Annotated[int, Field(strict=True, gt=0)]


class PredictRequest(BaseModel):
    """``POST /predict``: raw samples or base64 images, for one model."""

    model_config = ConfigDict(extra="forbid")
    model: StrictStr | None = Field(None, description="model name (default: the server's default model)")
    inputs: list[Any] | None = Field(None, description="samples of raw values 0..255 in the model's input shape (28x28 or 784 for MNIST)")
    images: list[StrictStr] | None = Field(None, description="base64 PNG or JPEG images")

    @model_validator(mode="after")
    def _one_kind(self) -> PredictRequest:
        if (self.inputs is None) == (self.images is None):
            raise ValueError("send exactly one of 'inputs' (raw values) or 'images' (base64 PNG/JPEG)")
        return self


class V2Tensor(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr
    shape: list[PositiveInt] = Field(min_length=1)
    datatype: V2Datatype
    data: list[Any]
    parameters: dict[str, Any] | None = None


class V2Output(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    """Open Inference Protocol v2 ``infer`` request (JSON tensors)."""

    model_config = ConfigDict(extra="forbid")
    id: StrictStr | None = None
    inputs: list[V2Tensor] = Field(min_length=1, max_length=1, description="exactly one input tensor")
    outputs: list[V2Output] | None = None
    parameters: dict[str, Any] | None = None


def validate(model: type[BaseModel], body: Any, status: int) -> Any:
    """``model.model_validate(body)``, its errors as one ``InputError`` naming each field."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        parts = []
        for e in exc.errors(include_url=False, include_input=False)[:5]:
            where = ".".join(str(p) for p in e["loc"])
            parts.append(f"{where}: {e['msg']}" if where else e["msg"].removeprefix("Value error, "))
        raise InputError("; ".join(parts), status) from None


COMPONENTS: dict[str, Any] = {}  # nested models' schemas, added to the app's OpenAPI components


def openapi_body(model: type[BaseModel], example: dict) -> dict:
    """``openapi_extra`` for a route that parses its body itself: the model's schema, with
    nested models as ``#/components/schemas`` references (``add_components`` adds them)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    COMPONENTS.update(schema.pop("$defs", {}))
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema, "example": example}}}}


def add_components(app: Any) -> None:
    default = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = default()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(COMPONENTS)
        return app.openapi_schema

    app.openapi = openapi
