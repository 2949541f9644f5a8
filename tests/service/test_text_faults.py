"""Text packages that used to take the server down or answer 500: a tokenizer that panics, one
whose unknown-token is missing, a transformers config of the wrong type, and texts that UTF-8
cannot hold. Each is refused with a message; the server starts and serves the rest."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from jpegweights.service import Settings, create_app
from tests.conftest import running_server
from tests.handlers.test_load_faults import PANICS_AT_LOAD, PANICS_ON_ENCODE
from tests.handlers.tiny_text import tokenizer_json, write_tiny_text

ADMIN = {"Authorization": "Bearer adm1n"}
BROKEN = {
    "panics-at-load": ({"tokenizer": tokenizer_json(normalizer=PANICS_AT_LOAD)}, "PanicException: Precompiled"),
    "panics-on-encode": ({"tokenizer": tokenizer_json(normalizer=PANICS_ON_ENCODE)}, "PanicException: index out"),
    "no-unk": ({"tokenizer": tokenizer_json(unk_token="[NOPE]")}, "WordPiece error: Missing"),
    "bad-act": ({"hidden_act": []}, "'hidden_act' expected str, got list"),
}


def post(client: TestClient, path: str, body: dict):
    """``body`` as JSON with ``\\ud800`` escapes, as any client may send it (httpx will not encode lone surrogates)."""
    return client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = tmp_path_factory.mktemp("text-store")
    write_tiny_text(store / "tiny-text")
    for name, (change, _) in BROKEN.items():
        write_tiny_text(store / name, **change)
    return store


@pytest.fixture(scope="module")
def served(store, tmp_path_factory):
    settings = Settings(
        model_dir=store, cache_dir=tmp_path_factory.mktemp("cache"), admin_token="adm1n", log_requests=False
    )
    with TestClient(create_app(settings), headers=ADMIN) as c:  # start-up itself used to fail on a panic
        yield c


def test_the_server_starts_serves_the_good_model_and_names_each_broken_one(served):
    ready = served.get("/readyz").json()
    assert ready["models"] == ["tiny-text"], ready
    for name, (_, message) in BROKEN.items():
        assert message in ready["failed"][name], (name, ready["failed"])
    r = served.post("/predict", json={"model": "tiny-text", "text": ["the cat sat", "é ☃"]})
    assert r.status_code == 200 and len(r.json()["embeddings"]) == 2


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_uploading_a_broken_text_package_is_refused_with_a_message(served, store, name):
    r = served.put(f"/models/up-{name}", content=(store / name / "model.jpw").read_bytes())
    assert r.status_code == 422 and BROKEN[name][1] in r.json()["detail"], r.text
    assert served.post(f"/models/{name}/load").status_code == 422


@pytest.mark.parametrize(
    "body, message",
    [
        ({"text": ["\ud800"]}, "text[0] is not valid Unicode: a lone surrogate"),
        ({"pairs": [["the cat", "x\udfff"]]}, "pairs[0][1] is not valid Unicode: a lone surrogate"),
    ],
)
def test_a_lone_surrogate_is_a_422_on_predict(served, body, message):
    r = post(served, "/predict", {"model": "tiny-text", **body})
    assert r.status_code == 422 and message in r.json()["detail"], r.text


def test_a_lone_surrogate_is_a_400_in_v2_bytes(served):
    tensor = {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["\ud800"]}
    r = post(served, "/v2/models/tiny-text/infer", {"inputs": [tensor]})
    assert r.status_code == 400 and "text[0] is not valid Unicode" in r.json()["error"], r.text


def test_lone_surrogates_leave_a_real_connection_open(tmp_path):
    """The refusals above, over one keep-alive connection to a real server: each is answered
    without closing it (the 500 they once got closed it with no ``Connection: close``)."""
    write_tiny_text(tmp_path / "store" / "tiny-text")
    requests = [
        ("/predict", {"text": ["\ud800"]}, 422),
        ("/predict", {"pairs": [["the cat", "x\udfff"]]}, 422),
        (
            "/v2/models/tiny-text/infer",
            {"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": ["\ud800"]}]},
            400,
        ),
        ("/predict", {"text": ["the cat sat"]}, 200),
    ]
    with running_server(tmp_path / "cache", model_dir=tmp_path / "store") as url:
        parts = urlsplit(url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        connection.connect()
        sock = connection.sock
        for path, body, status in requests:
            connection.request("POST", path, json.dumps(body), {"content-type": "application/json"})
            r = connection.getresponse()
            r.read()
            assert r.status == status and r.getheader("connection") != "close"
            assert connection.sock is sock  # the same connection, still open
        connection.close()
