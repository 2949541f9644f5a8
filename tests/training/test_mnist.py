from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from jpegweights.training.mnist import DataError, load_mnist


def write_idx(path, magic, shape, data: bytes, compress=True):
    raw = struct.pack(">I", magic) + struct.pack(f">{len(shape)}I", *shape) + data
    (gzip.open if compress else open)(path, "wb").write(raw)


def fake_mnist(tmp_path, n=5, compress=True):
    ext = ".gz" if compress else ""
    rng = np.random.default_rng(0)
    write_idx(
        tmp_path / f"t10k-images-idx3-ubyte{ext}",
        2051,
        (n, 28, 28),
        rng.integers(0, 256, n * 784, dtype=np.uint8).tobytes(),
        compress,
    )
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{ext}", 2049, (n,), bytes(range(n)), compress)
    return tmp_path


def test_real_test_split(mnist_test):
    assert mnist_test.images.shape == (10000, 28, 28) and mnist_test.labels.shape == (10000,)
    assert mnist_test.labels.bincount().tolist()[:3] == [980, 1135, 1032]


@pytest.mark.parametrize("compress", [True, False])
def test_reads_gzip_and_plain_idx(tmp_path, compress):
    split = load_mnist(fake_mnist(tmp_path, compress=compress), "test")
    assert len(split) == 5 and split.labels.tolist() == [0, 1, 2, 3, 4]


def test_missing_directory(tmp_path):
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.*not found"):
        load_mnist(tmp_path / "nowhere", "test")


def test_bad_magic(tmp_path):
    fake_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 1234, (5,), bytes(5))
    with pytest.raises(DataError, match="bad IDX magic 1234"):
        load_mnist(tmp_path, "test")


def test_truncated_data(tmp_path):
    fake_mnist(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 2051, (5, 28, 28), bytes(100))
    with pytest.raises(DataError, match="100 data bytes, header says 3920"):
        load_mnist(tmp_path, "test")


def test_not_gzip(tmp_path):
    fake_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"definitely not gzip")
    with pytest.raises(DataError, match="cannot read"):
        load_mnist(tmp_path, "test")


def test_count_mismatch(tmp_path):
    fake_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 2049, (4,), bytes(4))
    with pytest.raises(DataError, match="5 images but 4 labels"):
        load_mnist(tmp_path, "test")


def test_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        load_mnist(tmp_path, "validation")


def test_held_out_keeps_back_the_last_val_size_images():
    import torch

    from jpegweights.training.mnist import VAL_SIZE, Split, held_out

    n = VAL_SIZE + 7
    full = Split(torch.zeros(n, 28, 28, dtype=torch.uint8), torch.arange(n))
    train, validation = held_out(full)
    assert train.labels.tolist() == list(range(7)) and validation.labels.tolist() == list(range(7, n))
