"""The writers outside the service get the umask's modes too (``files.write_atomic`` and
``files.atomic_path``): ``compress``'s packages, the codec's ``save_file`` and the client's
downloads, whose cache is then readable by the other users of a shared cache. The store,
``jpegweights import`` and uploads are tested in ``tests/service/test_file_modes.py``."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from jpegweights.client import Client
from jpegweights.codec import EncodeConfig, save_file
from jpegweights.pipeline.compression import Compressed
from tests.conftest import ROOT

PACKAGE = (ROOT / "models" / "mnist-mlp" / "model.jpw").read_bytes()


@pytest.fixture(params=[0o022, 0o027])
def umask(request) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def modes(folder: Path) -> set[int]:
    return {stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


def test_compressed_and_saved_packages_get_umask_modes(tmp_path, umask):
    Compressed(PACKAGE, EncodeConfig(), len(PACKAGE)).save(tmp_path / "compressed.jpw")
    save_file({"w": torch.randn(16, 16)}, tmp_path / "saved.jpw", EncodeConfig())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compressed.jpw", "saved.jpw"]  # no temporary file left
    assert modes(tmp_path) == {0o666 & ~umask}


def test_downloads_and_their_cache_get_umask_modes(tmp_path, umask):
    etag = '"sha256-' + hashlib.sha256(PACKAGE).hexdigest() + '"'
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=PACKAGE, headers={"ETag": etag}))
    with Client("http://jpegweights.test", cache_dir=tmp_path / "cache", transport=transport) as c:
        copy = c.download("mnist-mlp", dest=tmp_path / "copy.jpw")
    assert copy.read_bytes() == PACKAGE
    assert len(list((tmp_path / "cache").rglob("*.jpw"))) == 1
    assert modes(tmp_path) == {0o666 & ~umask}  # the copy, the cached package and its metadata
