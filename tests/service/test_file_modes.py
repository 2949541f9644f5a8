"""Files the store and ``jpegweights import`` write get the umask's modes (0644 under 022), never
a temporary file's 0600: a server running as another user, or a store mounted read-only
elsewhere, must be able to read them. Uploaded float weights are coded with ``EncodeConfig()``."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from jpegweights.codec import EncodeConfig, load_manifest
from jpegweights.files import file_mode
from jpegweights.handlers.importers import from_state_dict, write_folder
from jpegweights.service import Settings, create_app
from tests.conftest import ROOT

ADMIN = {"Authorization": "Bearer adm1n"}


@pytest.fixture(params=[0o022, 0o027])
def umask(request) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


def test_file_mode_follows_the_umask_of_the_moment(umask):
    assert file_mode() == 0o666 & ~umask


def test_imported_folders_get_umask_modes(tmp_path, umask):
    save_file({"1.weight": torch.randn(8, 16), "1.bias": torch.randn(8)}, str(tmp_path / "w.safetensors"))
    layers = [{"type": "Flatten"}, {"type": "Linear", "in_features": 16, "out_features": 8}]
    architecture = {"input_shape": [1, 4, 4], "layers": layers}
    write_folder(from_state_dict(tmp_path / "w.safetensors", architecture), tmp_path / "tiny", EncodeConfig())
    want = 0o666 & ~umask
    assert modes(tmp_path / "tiny") == {"model.jpw": want, "model.json": want, "model.safetensors": want}
    assert stat.S_IMODE((tmp_path / "tiny").stat().st_mode) == 0o777 & ~umask  # not a temporary folder's 0700


def test_an_import_that_runs_out_of_disk_leaves_the_old_folder_and_nothing_else(tmp_path, monkeypatch):
    """The disk fills after the float source is written: the folder that was there stays as it
    was, and no half-written folder or staging folder is left (a scan would find neither)."""
    save_file({"1.weight": torch.randn(8, 16), "1.bias": torch.randn(8)}, str(tmp_path / "w.safetensors"))
    layers = [{"type": "Flatten"}, {"type": "Linear", "in_features": 16, "out_features": 8}]
    imported = from_state_dict(tmp_path / "w.safetensors", {"input_shape": [1, 4, 4], "layers": layers})
    store = tmp_path / "store"
    write_folder(imported, store / "tiny", EncodeConfig(quality=20))
    before = {p.name: p.read_bytes() for p in (store / "tiny").iterdir()}
    real = Path.write_bytes

    def full(self, data):
        if self.name == "model.jpw":
            raise OSError(28, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    for folder in (store / "tiny", store / "new"):
        with pytest.raises(OSError, match="No space left"):
            write_folder(imported, folder, EncodeConfig(quality=90))
    assert sorted(p.name for p in store.iterdir()) == ["tiny"]
    assert {p.name: p.read_bytes() for p in (store / "tiny").iterdir()} == before


def test_the_store_writes_umask_modes_and_codes_uploads_with_the_defaults(store_copy, tmp_path, umask):
    settings = Settings(model_dir=store_copy, cache_dir=tmp_path / "cache", admin_token="adm1n", log_requests=False)
    with TestClient(create_app(settings)) as c:
        assert c.get("/weights", params={"model": "mnist-mlp", "quality": 33}, headers=ADMIN).status_code == 200
        upload = (ROOT / "models" / "mnist-mlp" / "model.safetensors").read_bytes()
        assert c.put("/models/uploaded", content=upload, headers=ADMIN).status_code == 200
    want = 0o666 & ~umask
    cached = modes(tmp_path / "cache")
    assert list(cached) == ["q33.jpw"] and set(cached.values()) == {want}
    assert modes(store_copy / "uploaded") == {"model.jpw": want, "model.json": want, "model.safetensors": want}
    manifest = load_manifest((store_copy / "uploaded" / "model.jpw").read_bytes())
    # coded as `jpegweights import` codes, not with the seed experiment's q20
    assert EncodeConfig.from_dict(manifest["config"]) == EncodeConfig()
