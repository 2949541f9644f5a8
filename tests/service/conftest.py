from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient

from jpegweights.service import Settings, create_app
from tests.conftest import MNIST_STORE


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    return Settings(model_dir=MNIST_STORE, cache_dir=tmp_path_factory.mktemp("cache"), log_requests=False)


@pytest.fixture(scope="module")
def client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture()
def store_copy(tmp_path):
    """A writable copy of the bundled MNIST models' store."""
    dest = tmp_path / "models"
    shutil.copytree(MNIST_STORE, dest)  # symlinked folders are copied as folders
    return dest
