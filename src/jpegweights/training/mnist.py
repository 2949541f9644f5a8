"""MNIST from IDX ``.gz`` files (the format of the original distribution).

>>> train = load_mnist("../shared/data/mnist", "train")
>>> train.images.shape, train.labels.shape
(torch.Size([60000, 28, 28]), torch.Size([60000]))
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
VAL_SIZE = 5000  # the last training images: held out by train, they validate evaluate's search and finetune


class DataError(Exception):
    """The MNIST files are missing or malformed."""


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # (n, 28, 28) uint8
    labels: torch.Tensor  # (n,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int) -> Split:
        return Split(self.images[:n], self.labels[:n])


def held_out(full: Split) -> tuple[Split, Split]:
    """(the training images, the last ``VAL_SIZE`` as the validation split): the one rule that
    ``train_and_save``, ``evaluate_model``'s search and ``finetune_idx`` share.

    >>> train, validation = held_out(load_mnist("../shared/data/mnist", "train"))
    >>> len(train), len(validation)
    (55000, 5000)
    """
    return full.subset(len(full) - VAL_SIZE), Split(full.images[-VAL_SIZE:], full.labels[-VAL_SIZE:])


def _find(data_dir: Path, stem: str) -> Path:
    for candidate in (
        data_dir / f"{stem}.gz",
        data_dir / stem,
        data_dir / "MNIST" / "raw" / f"{stem}.gz",
        data_dir / "MNIST" / "raw" / stem,
    ):
        if candidate.is_file():
            return candidate
    raise DataError(f"{stem}(.gz) not found in {data_dir} (nor in {data_dir}/MNIST/raw)")


def _read_idx(path: Path, magic: int, dims: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    header = 4 + 4 * dims
    if len(raw) < header:
        raise DataError(f"{path}: file too short for an IDX header")
    got = struct.unpack(">I", raw[:4])[0]
    if got != magic:
        raise DataError(f"{path}: bad IDX magic {got}, expected {magic}")
    shape = struct.unpack(f">{dims}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(f"{path}: {len(raw) - header} data bytes, header says {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_mnist(data_dir: str | Path, split: str = "train", download: bool = False, labelled: bool = True) -> Split:
    """Read one split ("train" or "test") from IDX files in ``data_dir``. With ``labelled=False``
    the labels file may be missing (the labels are then all 0: for training without them).

    With ``download=True`` and no files present, torchvision fetches the originals
    (needs internet) into ``data_dir/MNIST/raw``.
    """
    if split not in FILES:
        raise ValueError(f"split must be one of {sorted(FILES)}, got {split!r}")
    data_dir = Path(data_dir)
    image_stem, label_stem = FILES[split]
    if download:
        try:
            _find(data_dir, image_stem)
        except DataError:
            from torchvision.datasets import MNIST

            MNIST(str(data_dir), train=split == "train", download=True)
    images = _read_idx(_find(data_dir, image_stem), IMAGES_MAGIC, 3)
    try:
        labels = _read_idx(_find(data_dir, label_stem), LABELS_MAGIC, 1)
    except DataError:
        if labelled:
            raise
        labels = np.zeros(images.shape[0], dtype=np.uint8)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{split}: {images.shape[0]} images but {labels.shape[0]} labels")
    if images.shape[1:] != (28, 28):
        raise DataError(f"{split}: images are {images.shape[1:]}, expected (28, 28)")
    if labels.size and labels.max() > 9:
        raise DataError(f"{split}: label {labels.max()} out of range 0..9")
    return Split(torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))
