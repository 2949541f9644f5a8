"""Models at run time: upload, delete, load, unload, rescan, and replacing a model under load."""

from __future__ import annotations

import asyncio
import json
import shutil

import httpx
import pytest
from fastapi.testclient import TestClient

from jpegweights.service import Settings, create_app
from tests.conftest import ROOT

ADMIN = {"Authorization": "Bearer adm1n"}
MLP = (ROOT / "models" / "mnist-mlp" / "model.jpw").read_bytes()
CNN = (ROOT / "models" / "mnist-cnn" / "model.jpw").read_bytes()
ZEROS = {"inputs": [[0] * 784]}


@pytest.fixture()
def managed(store_copy, tmp_path):
    settings = Settings(
        model_dir=store_copy, cache_dir=tmp_path / "cache", admin_token="adm1n", log_requests=False, request_timeout_s=1
    )
    with TestClient(create_app(settings)) as c:
        yield c, store_copy


def test_management_is_off_without_an_admin_token(client):
    r = client.put("/models/x", content=MLP)
    assert r.status_code == 403 and "JPEGWEIGHTS_ADMIN_TOKEN" in r.json()["detail"]


def test_management_needs_the_admin_token(managed):
    c, _ = managed
    assert c.put("/models/x", content=MLP).status_code == 401
    assert c.delete("/models/mnist-mlp", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.post("/predict", json=ZEROS).status_code == 401  # with an admin token set, reads need a token too
    assert c.post("/predict", json=ZEROS, headers=ADMIN).status_code == 200


def test_upload_serves_a_new_model_and_a_replacement_gets_a_new_version(managed):
    c, store = managed
    r = c.put("/models/digits", content=CNN, headers=ADMIN)
    assert r.status_code == 200 and r.json()["name"] == "digits" and r.json()["version"] == "1"
    assert c.post("/predict", json={"model": "digits", **ZEROS}, headers=ADMIN).json()["version"] == "1"
    r = c.put("/models/digits", content=MLP, headers=ADMIN)
    assert r.json()["version"] == "2" and (store / "digits" / "model.jpw").read_bytes() == MLP
    assert c.put("/models/digits?version=v9", content=CNN, headers=ADMIN).json()["version"] == "v9"
    assert not [p for p in store.iterdir() if p.name.startswith(".staging-")]


def test_a_compact_package_uploads_and_serves_as_it_is(managed):
    """Version 4 (the packed container: no 'jpegweights' key in the safetensors metadata) is
    recognised as a package, not taken for float weights."""
    c, store = managed
    compact = (ROOT / "models" / "mnist-cnn" / "model-ft.jpw").read_bytes()
    r = c.put("/models/tiny", content=compact, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert c.post("/predict", json={"model": "tiny", **ZEROS}, headers=ADMIN).status_code == 200
    assert (
        c.get("/weights", params={"model": "tiny"}, headers=ADMIN).content
        == compact
        == (store / "tiny" / "model.jpw").read_bytes()
    )


def test_a_safetensors_upload_is_encoded_and_keeps_its_float_source(managed):
    c, store = managed
    r = c.put(
        "/models/float-mlp", content=(ROOT / "models" / "mnist-mlp" / "model.safetensors").read_bytes(), headers=ADMIN
    )
    assert r.status_code == 200 and r.json()["other_qualities"] is True
    assert c.get("/weights", params={"model": "float-mlp", "quality": 30}, headers=ADMIN).status_code == 200


@pytest.mark.parametrize(
    "body, message",
    [
        (b"\x00" * 100, "neither a .jpw package nor a safetensors file"),
        (MLP[:-10], "neither a .jpw package nor a safetensors file"),
        (MLP[:-1] + bytes([MLP[-1] ^ 1]), "digest mismatch"),
    ],
)
def test_a_bad_upload_replaces_nothing(managed, body, message):
    c, store = managed
    before = (store / "mnist-mlp" / "model.jpw").read_bytes()
    r = c.put("/models/mnist-mlp", content=body, headers=ADMIN)
    assert r.status_code == 422 and "nothing replaced" in r.json()["detail"] and message in r.json()["detail"]
    assert (store / "mnist-mlp" / "model.jpw").read_bytes() == before
    assert c.post("/predict", json=ZEROS, headers=ADMIN).status_code == 200
    assert not [p for p in store.iterdir() if p.name.startswith(".staging-")]


def test_bad_names_and_sizes(managed, store_copy, tmp_path):
    c, _ = managed
    assert c.put("/models/..evil", content=MLP, headers=ADMIN).status_code == 422
    assert c.put("/models/%2e%2e", content=MLP, headers=ADMIN).status_code in (404, 422)
    small = Settings(
        model_dir=store_copy, cache_dir=tmp_path, admin_token="adm1n", max_upload_bytes=4096, log_requests=False
    )
    with TestClient(create_app(small)) as c2:
        assert c2.put("/models/x", content=MLP, headers=ADMIN).status_code == 413


def test_delete_unload_load_and_rescan(managed):
    c, store = managed
    assert c.post("/models/mnist-mlp/unload", headers=ADMIN).status_code == 200
    assert c.post("/predict", json={"model": "mnist-mlp", **ZEROS}, headers=ADMIN).status_code == 404
    index = c.post("/v2/repository/index", headers=ADMIN).json()
    assert {"name": "mnist-mlp", "state": "UNAVAILABLE", "reason": "unloaded"} in index
    assert c.post("/v2/repository/models/mnist-mlp/load", headers=ADMIN).json()["name"] == "mnist-mlp"
    assert c.post("/predict", json=ZEROS, headers=ADMIN).status_code == 200
    shutil.copytree(store / "mnist-mlp", store / "copy-mlp")
    meta = json.loads((store / "copy-mlp" / "model.json").read_text())
    (store / "copy-mlp" / "model.json").write_text(json.dumps({**meta, "name": "copy-mlp"}))
    assert "copy-mlp" in c.post("/models/rescan", headers=ADMIN).json()["models"]
    shutil.rmtree(store / "copy-mlp")
    assert "copy-mlp" not in c.post("/models/rescan", headers=ADMIN).json()["models"]
    assert c.post("/models/nothing/load", headers=ADMIN).status_code == 404
    assert c.delete("/models/mnist-cnn", headers=ADMIN).json() == {"deleted": "mnist-cnn"}
    assert not (store / "mnist-cnn").exists() and c.get("/models/mnist-cnn", headers=ADMIN).status_code == 404
    assert c.delete("/models/mnist-cnn", headers=ADMIN).status_code == 404


def test_replacing_a_model_under_load_fails_no_request(store_copy, tmp_path):
    """64 concurrent clients predict on a real server while the model is replaced five times:
    every request succeeds, answered by the old or the new version."""
    from tests.conftest import running_server

    async def run(url: str):
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=url, headers=ADMIN, limits=limits, timeout=30) as h:
            stop = asyncio.Event()

            async def predictor():
                answers = []
                while not stop.is_set():
                    r = await h.post("/predict", json=ZEROS)
                    answers.append((r.status_code, r.json().get("version")))
                return answers

            async def replacer():
                for package in (CNN, MLP, CNN, MLP, CNN):
                    await asyncio.sleep(0.2)
                    r = await h.put("/models/mnist-mlp", content=package)
                    assert r.status_code == 200, r.text
                await asyncio.sleep(0.2)
                stop.set()

            results = await asyncio.gather(*[predictor() for _ in range(64)], replacer())
            return [a for answers in results[:-1] for a in answers]

    with running_server(
        tmp_path / "cache", "--model-dir", str(store_copy), env={"JPEGWEIGHTS_ADMIN_TOKEN": "adm1n"}
    ) as url:
        answers = asyncio.run(run(url))
    assert len(answers) > 64 and {status for status, _ in answers} == {200}, sorted(set(answers))[:5]
    assert {version for _, version in answers} <= {"1", "2", "3", "4", "5", "6"} and len({v for _, v in answers}) >= 3


def test_the_client_and_cli_push(store_copy, tmp_path, capsys):
    from jpegweights.cli.main import main
    from jpegweights.client import Client, HTTPStatusError
    from tests.conftest import running_server

    with running_server(
        tmp_path / "cache", "--model-dir", str(store_copy), env={"JPEGWEIGHTS_ADMIN_TOKEN": "adm1n"}
    ) as url:
        with Client(url, token="adm1n", cache_dir=tmp_path / "c") as c:
            assert c.push(ROOT / "models" / "mnist-cnn" / "model.jpw", "pushed")["version"] == "1"
            assert c.predict([[0] * 784], model="pushed")["version"] == "1"
        with Client(url, token="wrong", cache_dir=tmp_path / "c") as c, pytest.raises(HTTPStatusError, match="401"):
            c.push(ROOT / "models" / "mnist-cnn" / "model.jpw", "pushed")
        argv = ["push", url, str(ROOT / "models" / "mnist-mlp" / "model.jpw"), "--name", "pushed", "--token", "adm1n"]
        assert main(argv) == 0 and "pushed version 2: serving" in capsys.readouterr().out
        assert main(["push", url, str(tmp_path / "missing.jpw"), "--name", "x", "--token", "adm1n"]) == 1
