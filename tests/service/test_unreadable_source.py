"""A model whose float source (model.safetensors) the server cannot read, because of its mode or
because the folder holds only the package (a replica that fetched just the ``.jpw``), still
loads and serves its stored package; other qualities and the gallery's float pictures answer
404 with a message that says why, never 500, and the log names no FileNotFoundError.

The mode-0000 case runs a real server whose read the kernel refuses: nothing is mocked. Root
reads any file whatever its mode, so when the tests run as root the server runs without the
capabilities that allow it (``setpriv``): it is then the file's owner with no permission bits, as
another user (the image's uid 10001) is with a root-owned file of mode 0600.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from jpegweights.service import Settings, create_app
from tests.conftest import ROOT, server_process

PNG = "/models/mnist-mlp/tensors/1.weight.png"


def unprivileged() -> tuple[str, ...]:
    """A command prefix under which file modes bind this process's children."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv (util-linux): cannot run a server that file modes bind")
    return ("setpriv", "--bounding-set=-dac_override,-dac_read_search")


def locked_store(root: Path) -> Path:
    """mnist-mlp with its float source at mode 0000; mnist-cnn with its package alone."""
    store = root / "models"
    for name in ("mnist-mlp", "mnist-cnn"):
        shutil.copytree(ROOT / "models" / name, store / name)
    (store / "mnist-mlp" / "model.safetensors").chmod(0)
    (store / "mnist-cnn" / "model.safetensors").unlink()
    return store


def readable_under(prefix: tuple[str, ...], path: Path) -> str:
    """Opening ``path`` in a process run as the server will be: "readable" or "denied" (the premise)."""
    probe = f"""
try:
    open({str(path)!r}, "rb")
    print("readable")
except PermissionError:
    print("denied")
"""
    return subprocess.run([*prefix, sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip()


def test_a_source_of_mode_0000_serves_the_package_and_answers_404_for_the_rest(tmp_path):
    store, cache, prefix = locked_store(tmp_path), tmp_path / "cache", unprivileged()
    source = store / "mnist-mlp" / "model.safetensors"
    assert readable_under(prefix, source) == "denied", "the server could read a file of mode 0000: this proves nothing"
    with server_process(cache, model_dir=store, prefix=prefix) as (url, _), httpx.Client(base_url=url, timeout=60) as c:
        assert set(c.get("/readyz").json()["models"]) >= {"mnist-mlp", "mnist-cnn"}
        assert c.get("/models/mnist-mlp").json()["other_qualities"] is False
        stored = c.get("/weights", params={"model": "mnist-mlp"})
        assert stored.status_code == 200 and stored.content == (store / "mnist-mlp" / "model.jpw").read_bytes()
        assert c.post("/predict", json={"model": "mnist-mlp", "inputs": [[0] * 784]}).status_code == 200

        other = c.get("/weights", params={"model": "mnist-mlp", "quality": 50})
        assert other.status_code == 404
        assert other.json()["detail"] == (
            "the float source of model 'mnist-mlp' (model.safetensors) is not readable by the server "
            "(permission denied): only quality 20 is available"
        )
        listing = c.get("/models/mnist-mlp/tensors").json()
        assert listing["original"] is False and "permission denied" in listing["original_unavailable"]
        assert c.get(PNG, params={"kind": "coded"}).status_code == 200
        for kind in ("original", "difference"):
            picture = c.get(PNG, params={"kind": kind})
            assert picture.status_code == 404 and "permission denied" in picture.json()["detail"]

        absent = c.get("/weights", params={"model": "mnist-cnn", "quality": 50})
        assert absent.status_code == 404
        assert absent.json()["detail"] == (
            "model 'mnist-cnn' has no float source in the store: only quality 20 is available"
        )

        source.chmod(0o644)  # the operator fixes the mode: no restart needed, the source is read when asked for
        assert c.get("/weights", params={"model": "mnist-mlp", "quality": 50}).status_code == 200
        assert c.get(PNG, params={"kind": "original"}).status_code == 200
    log = (cache / "server.log").read_text()
    assert '"event": "source_unreadable"' in log and "permission denied" in log
    assert "FileNotFoundError" not in log and "Traceback" not in log


def test_a_source_removed_after_loading_answers_404(store_copy, tmp_path):
    settings = Settings(model_dir=store_copy, cache_dir=tmp_path / "cache", log_requests=False)
    with TestClient(create_app(settings)) as c:
        (store_copy / "mnist-mlp" / "model.safetensors").unlink()
        other = c.get("/weights", params={"model": "mnist-mlp", "quality": 50})
        assert other.status_code == 404
        assert other.json()["detail"] == (
            "the float source of model 'mnist-mlp' (model.safetensors) is no longer in the store: "
            "only quality 20 is available"
        )
        assert c.get("/models/mnist-mlp/tensors").json()["original"] is False
        assert c.get(PNG, params={"kind": "coded"}).status_code == 200
        picture = c.get(PNG, params={"kind": "difference"})
        assert picture.status_code == 404 and "no longer in the store" in picture.json()["detail"]


def test_a_cache_that_cannot_be_written_answers_503_and_the_stored_package_still_serves(store_copy, tmp_path):
    blocked = tmp_path / "cache"
    blocked.write_bytes(b"")  # a file where the cache folder should be: no folder can be made in it
    settings = Settings(model_dir=store_copy, cache_dir=blocked, log_requests=False)
    with TestClient(create_app(settings)) as c:
        other = c.get("/weights", params={"model": "mnist-mlp", "quality": 50})
        assert other.status_code == 503
        assert other.json()["detail"].startswith("the server cannot write its package cache")
        assert c.get("/weights", params={"model": "mnist-mlp"}).status_code == 200
