"""A model store is read like untrusted input: an odd folder fails alone, with a message that
names no filesystem path, and nothing it says can make the server write outside its cache."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from jpegweights.service import Settings, create_app


def app_for(store, tmp_path):
    return TestClient(create_app(Settings(model_dir=store, cache_dir=tmp_path / "cache", log_requests=False)))


def edit_meta(folder, **changes):
    meta = json.loads((folder / "model.json").read_text())
    meta.update(changes)
    (folder / "model.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"name": "../escape"}, "model name '../escape' is not allowed"),
        ({"version": "../../x"}, "model version '../../x' is not allowed"),
        ({"name": "/etc"}, "model name '/etc' is not allowed"),
        ({"package": "../../../etc/passwd"}, "package '../../../etc/passwd' is not allowed"),
        ({"source": "sub/../../x.safetensors"}, "source 'sub/../../x.safetensors' is not allowed"),
    ],
)
def test_names_and_files_from_model_json_cannot_leave_their_folders(store_copy, tmp_path, changes, message):
    edit_meta(store_copy / "mnist-cnn", **changes)
    with app_for(store_copy, tmp_path) as c:
        ready = c.get("/readyz").json()
        assert ready["models"] == ["mnist-mlp"] and message in ready["failed"]["mnist-cnn"]
        for model in ("mnist-mlp", changes.get("name", "mnist-cnn")):
            c.get("/weights", params={"model": model, "quality": 33})  # encodes into the cache
    written = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(store_copy)]
    assert all(p.is_relative_to(tmp_path / "cache") for p in written), written


def test_hidden_or_odd_folders_are_reported_not_skipped_silently(store_copy, tmp_path):
    shutil.copytree(store_copy / "mnist-cnn", store_copy / ".hidden")
    shutil.copytree(store_copy / "mnist-cnn", store_copy / "..evil")
    with app_for(store_copy, tmp_path) as c:
        failed = c.get("/readyz").json()["failed"]
    assert "folder name '.hidden' is not allowed" in failed[".hidden"] and "folder name '..evil'" in failed["..evil"]


def test_a_folder_claiming_a_served_name_is_refused_not_swapped_in(store_copy, tmp_path):
    shutil.copytree(store_copy / "mnist-cnn", store_copy / "zz-impostor")
    edit_meta(store_copy / "zz-impostor", name="mnist-mlp")
    with app_for(store_copy, tmp_path) as c:
        ready = c.get("/readyz").json()
        assert "already served from folder 'mnist-mlp'" in ready["failed"]["zz-impostor"]
        assert c.get("/models/mnist-mlp").json()["input_shape"] == [1, 28, 28]
        assert (
            c.get("/models/mnist-mlp").json()["package_bytes"]
            == (store_copy / "mnist-mlp" / "model.jpw").stat().st_size
        )


def test_a_symlink_to_a_system_file_leaks_neither_its_bytes_nor_paths(store_copy, tmp_path):
    package = store_copy / "mnist-cnn" / "model.jpw"
    package.unlink()
    os.symlink("/etc/passwd", package)
    with app_for(store_copy, tmp_path) as c:
        for path in ("/readyz", "/models"):
            text = c.get(path).text
            assert "root:" not in text and str(store_copy) not in text and str(tmp_path) not in text, text
        assert "mnist-cnn" in c.get("/readyz").json()["failed"]


def test_a_model_that_cannot_run_its_declared_input_fails_at_load(store_copy, tmp_path):
    from jpegweights.codec import load_package, save_file

    state, manifest = load_package(store_copy / "mnist-mlp" / "model.jpw")
    manifest["architecture"]["input_shape"] = [3, 5]  # the first Linear wants 784 values
    save_file(state, store_copy / "mnist-mlp" / "model.jpw", architecture=manifest["architecture"])
    with app_for(store_copy, tmp_path) as c:
        ready = c.get("/readyz").json()
        assert (
            ready["models"] == ["mnist-cnn"]
            and "does not run on its handler's example input" in ready["failed"]["mnist-mlp"]
        )
        assert c.get("/models").status_code == 200  # one odd model does not take the listing down


def test_an_empty_token_refuses_to_start():
    with pytest.raises(ValidationError, match="token is set but empty"):
        Settings(token="")
    with pytest.raises(ValidationError, match="token is set but empty"):
        Settings(token="   ")


def test_decode_ms_times_the_package_alone_not_the_handler_built_after_it(store_copy, tmp_path, monkeypatch, caplog):
    """/models' decode_ms (and the metric) is the package's decode; the log's load_ms is the
    whole load. Building MiniLM's handler (importing transformers) took 4.3 s, reported as
    decode_ms before."""
    import logging
    import time

    from jpegweights import handlers

    build = handlers.load

    def slow_build(*args, **kwargs):
        time.sleep(0.5)
        return build(*args, **kwargs)

    monkeypatch.setattr(handlers, "load", slow_build)
    with caplog.at_level(logging.INFO), app_for(store_copy, tmp_path) as client:
        listed = client.get("/models").json()["models"]
    assert listed and all(m["decode_ms"] < 400 for m in listed), [m["decode_ms"] for m in listed]
    loads = [json.loads(r.getMessage()) for r in caplog.records if '"model_loaded"' in r.getMessage()]
    assert loads and all(e["load_ms"] >= 500 > e["decode_ms"] for e in loads), loads
