"""A replica's model store filled from a model source (``jpegweights.deploy.source``): fetched from
a real server with the client, or a shared folder as it is. Needs no Ray."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
from fastapi.testclient import TestClient

from jpegweights.deploy.source import SourceError, prepare_store
from jpegweights.service import Settings, create_app
from tests.conftest import MNIST_STORE, ROOT


def test_a_server_source_is_fetched_verified_and_served(server, tmp_path):
    store = prepare_store(server, tmp_path / "work")
    assert store.owned and store.default_model == "mnist-mlp"
    assert sorted(p.name for p in store.model_dir.iterdir()) == ["mnist-cnn", "mnist-mlp"]
    package = (ROOT / "models" / "mnist-mlp" / "model.jpw").read_bytes()
    assert (store.model_dir / "mnist-mlp" / "model.jpw").read_bytes() == package  # the compact form, no float source
    assert not (store.model_dir / "mnist-mlp" / "model.safetensors").exists()
    assert json.loads((store.model_dir / "mnist-mlp" / "model.json").read_text()) == {
        "name": "mnist-mlp", "version": "1", "package": "model.jpw", "quality": 20,
    }  # fmt: skip
    settings = Settings(model_dir=store.model_dir, cache_dir=tmp_path / "server", default_model=store.default_model)
    with TestClient(create_app(settings)) as c:
        assert c.get("/weights", params={"model": "mnist-mlp"}).content == package
        other = c.get("/weights", params={"model": "mnist-mlp", "quality": 50})
        assert other.status_code == 404 and "no float source" in other.json()["detail"]
    store.remove()
    assert not store.model_dir.exists()


def test_some_models_only_and_a_missing_one_named(server, tmp_path):
    store = prepare_store(server, tmp_path / "work", models=["mnist-cnn"])
    assert [p.name for p in store.model_dir.iterdir()] == ["mnist-cnn"]
    assert store.default_model is None  # the source's default is not among them
    with pytest.raises(SourceError, match=r"serves no model nope \(it serves: mnist-cnn, mnist-mlp\)"):
        prepare_store(server, tmp_path / "work", models=["mnist-cnn", "nope"])
    assert len(list((tmp_path / "work" / "stores").iterdir())) == 1  # the failed fetch left no folder


def test_replicas_of_one_machine_share_the_cache_and_fetch_in_turn(server, tmp_path):
    stores, errors = [], []

    def replica() -> None:
        try:
            stores.append(prepare_store(server, tmp_path / "work", models=["mnist-mlp"]))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len({s.model_dir for s in stores}) == 3
    assert len({(s.model_dir / "mnist-mlp" / "model.jpw").read_bytes() for s in stores}) == 1


def test_a_dead_replicas_store_is_removed_by_the_next(server, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / "work" / "stores" / f"store-{int(dead.stdout)}-x"
    left.mkdir(parents=True)
    prepare_store(server, tmp_path / "work", models=["mnist-mlp"])
    assert not left.exists()


def test_a_folder_source_is_served_as_it_is(tmp_path):
    store = prepare_store(str(MNIST_STORE), tmp_path / "work")
    assert store.model_dir == MNIST_STORE and not store.owned and store.default_model is None
    store.remove()
    assert MNIST_STORE.is_dir()  # a shared folder is never removed


@pytest.mark.parametrize("source", ["ftp://example.org/models", "no/such/folder"])
def test_a_source_that_is_neither_a_url_nor_a_folder(source, tmp_path):
    with pytest.raises(SourceError, match="neither an http\\(s\\) URL nor a folder"):
        prepare_store(source, tmp_path / "work")
