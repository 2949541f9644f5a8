"""The error table: every exception the service answers has one documented status, and a route
that raises it gets that status and its message, as ``detail`` (or ``error`` under /v2)."""

from __future__ import annotations

import re

import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient

from jpegweights.codec import CodecError
from jpegweights.handlers import RequestError, RequestTooLarge
from jpegweights.service import Settings, create_app
from jpegweights.service import errors
from jpegweights.service.errors import STATUS, ServiceError, status_of


def subclasses(cls: type) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *subclasses(sub))]


SERVICE_ERRORS = [ServiceError, *subclasses(ServiceError)]
# The module docstring's tree: "Name (Base)   status  what it means"
DOCUMENTED = {m[1]: int(m[2]) for m in re.finditer(r"(\w+)(?: \(\w+\))?\s+(\d{3})\s", errors.__doc__)}
FOREIGN = {RequestError: 422, RequestTooLarge: 413}


def test_every_service_error_has_its_documented_status():
    assert {c.__name__ for c in SERVICE_ERRORS} == set(DOCUMENTED)
    for cls in SERVICE_ERRORS:
        assert cls in STATUS, f"{cls.__name__} has no row of its own in errors.STATUS"
        assert STATUS[cls] == DOCUMENTED[cls.__name__] and 400 <= STATUS[cls] <= 599, cls


@pytest.fixture(scope="module")
def raising(tmp_path_factory):
    """An app (with no models) and a route under / and /v2 that raises what the test names."""
    empty, cache = tmp_path_factory.mktemp("empty"), tmp_path_factory.mktemp("cache")
    app = create_app(Settings(model_dir=empty, cache_dir=cache, log_requests=False))
    raisers = {c.__name__: c for c in [*SERVICE_ERRORS, *FOREIGN, CodecError]}

    async def raise_it(name: str):
        raise raisers[name](f"{name} was raised")

    async def raise_http():
        raise HTTPException(418, "short and stout", headers={"X-Teapot": "yes"})

    for prefix in ("", "/v2"):
        app.add_api_route(f"{prefix}/test-raise/{{name}}", raise_it)
        app.add_api_route(f"{prefix}/test-http", raise_http)
    with TestClient(app) as client:
        yield client


@pytest.mark.parametrize("cls", [*SERVICE_ERRORS, *FOREIGN], ids=lambda c: c.__name__)
@pytest.mark.parametrize("prefix, key", [("", "detail"), ("/v2", "error")])
def test_a_route_raising_each_error_gets_its_status_and_message(raising, cls, prefix, key):
    r = raising.get(f"{prefix}/test-raise/{cls.__name__}")
    assert r.status_code == STATUS[cls] == status_of(cls("x")), r.text
    assert r.json() == {key: f"{cls.__name__} was raised"}
    assert FOREIGN.get(cls, STATUS[cls]) == r.status_code  # the handlers' errors: 422, and 413 when too large


def test_foreign_exceptions_keep_their_answers(raising):
    r = raising.get("/test-raise/CodecError")
    assert r.status_code == 500 and r.json() == {"detail": "stored package is unreadable: CodecError was raised"}
    r = raising.get("/v2/test-http")
    assert r.status_code == 418 and r.json() == {"error": "short and stout"} and r.headers["x-teapot"] == "yes"
    r = raising.get("/models/x/weights/t.jpg", params={"quality": 0})  # RequestValidationError: each field named
    assert r.status_code == 422
    assert r.json()["detail"].startswith("query.quality: Input should be greater than or equal to 1")


def test_an_exception_outside_the_table_has_no_status():
    with pytest.raises(KeyError, match="ZeroDivisionError has no status"):
        status_of(ZeroDivisionError())


ADMIN = {"Authorization": "Bearer adm1n"}
ONE_ZERO = {"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [0] * 784}


@pytest.fixture()
def small(store_copy, tmp_path):
    settings = Settings(
        model_dir=store_copy, cache_dir=tmp_path / "cache", admin_token="adm1n", max_samples=2, log_requests=False
    )
    with TestClient(create_app(settings)) as c:
        yield c, store_copy


def test_errors_that_once_carried_their_status_keep_it(small, monkeypatch):
    """The raisers whose status was an argument (``RequestError(..., 400)``) and is now a class."""
    c, store = small
    r = c.post("/v2/models/mnist-mlp/infer", json={"inputs": [{**ONE_ZERO, "name": "nope"}]}, headers=ADMIN)
    assert r.status_code == 400 and r.json()["error"].startswith("this model has no input 'nope'")
    three = {**ONE_ZERO, "shape": [3, 784], "data": [0] * 2352}
    r = c.post("/v2/models/mnist-mlp/infer", json={"inputs": [three]}, headers=ADMIN)
    assert r.status_code == 413 and r.json()["error"] == "inputs has 3 samples; the limit is 2 per request"
    body = {"model": "mnist-mlp", "inputs": [[0] * 784]}
    r = c.post("/predict", params={"model": "mnist-cnn"}, json=body, headers=ADMIN)
    assert r.status_code == 400 and r.json()["detail"] == "the request names two models: ['mnist-cnn', 'mnist-mlp']"
    assert c.post("/models/nothing/load", headers=ADMIN).json() == {"detail": "no model folder 'nothing' in the store"}
    (store / "mnist-cnn" / "model.jpw").write_bytes(b"broken")
    r = c.post("/models/mnist-cnn/load", headers=ADMIN)
    assert r.status_code == 422 and r.json()["detail"].startswith("model 'mnist-cnn' does not load: ")

    def unwritable(*args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(c.app.state.runtime.store, "publish", unwritable)
    r = c.put("/models/x", content=(store / "mnist-mlp" / "model.jpw").read_bytes(), headers=ADMIN)
    assert r.status_code == 409
    assert r.json() == {"detail": "the model store cannot be written (Permission denied); nothing replaced"}
