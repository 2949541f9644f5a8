from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# CI explores the same examples every run; locally hypothesis keeps searching.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(os.environ.get("JPEGWEIGHTS_MNIST", ROOT.parent / "shared" / "data" / "mnist"))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"MNIST not found at {MNIST_DIR}; set JPEGWEIGHTS_MNIST to its directory")
    return MNIST_DIR


@pytest.fixture(scope="session")
def mnist_test(mnist_dir):
    from training.mnist import load_mnist

    return load_mnist(mnist_dir, "test")


@pytest.fixture(scope="session")
def trained_mlp(mnist_dir):
    """The seed MLP, trained briefly (3 epochs, fixed seed): (module, spec)."""
    from training.mnist import load_mnist
    from training.train import train

    return train(load_mnist(mnist_dir, "train"), "mlp", epochs=3)
