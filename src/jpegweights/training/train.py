"""Train the seed experiment's models on MNIST with a fixed seed.

>>> model, spec = train(load_mnist(DIR, "train"), arch="mlp", epochs=2)
>>> accuracy(model, spec, load_mnist(DIR, "test"))
0.97...

``train_and_save`` is the whole job (``jpegweights train``): MNIST's files in, a model file out.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from jpegweights import cpus
from jpegweights.handlers import build, preprocess
from jpegweights.pipeline import save_model

from .mnist import Split, held_out, load_mnist

PREPROCESS = {"scale": 1 / 255, "mean": [0.1307], "std": [0.3081]}

ARCHITECTURES: dict[str, dict[str, Any]] = {
    # The seed: 784 -> 512 -> 10, ReLU, with biases.
    "mlp": {
        "input_shape": [1, 28, 28],
        "preprocess": PREPROCESS,
        "layers": [
            {"type": "Flatten"},
            {"type": "Linear", "in_features": 784, "out_features": 512},
            {"type": "ReLU"},
            {"type": "Linear", "in_features": 512, "out_features": 10},
        ],
    },
    # LeNet-5 style: two conv/pool stages, three dense layers.
    "cnn": {
        "input_shape": [1, 28, 28],
        "preprocess": PREPROCESS,
        "layers": [
            {"type": "Conv2d", "in_channels": 1, "out_channels": 6, "kernel_size": 5, "padding": 2},
            {"type": "ReLU"},
            {"type": "MaxPool2d", "kernel_size": 2},
            {"type": "Conv2d", "in_channels": 6, "out_channels": 16, "kernel_size": 5},
            {"type": "ReLU"},
            {"type": "MaxPool2d", "kernel_size": 2},
            {"type": "Flatten"},
            {"type": "Linear", "in_features": 400, "out_features": 120},
            {"type": "ReLU"},
            {"type": "Linear", "in_features": 120, "out_features": 84},
            {"type": "ReLU"},
            {"type": "Linear", "in_features": 84, "out_features": 10},
        ],
    },
}


def _inputs(spec: dict[str, Any], images: torch.Tensor) -> torch.Tensor:
    # (n, 28, 28) uint8 -> (n, *input_shape) float32, normalized
    return preprocess(spec, images.reshape(len(images), *spec["input_shape"]))


@cpus.torch_threads()  # no more threads than the CPUs this process may use
def train(
    data: Split,
    arch: str = "mlp",
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``arch`` on ``data``; return the module (in eval mode) and its spec."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
    spec = ARCHITECTURES[arch]
    torch.manual_seed(seed)
    model = build(spec)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x_all, y_all = _inputs(spec, data.images), data.labels
    gen = torch.Generator().manual_seed(seed)
    show = sys.stderr.isatty() if progress is None else progress
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=gen)
        batches = range(0, len(data), batch_size)
        for start in tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", disable=not show, leave=False):
            idx = order[start : start + batch_size]
            loss = nn.functional.cross_entropy(model(x_all[idx]), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), spec


@torch.no_grad()
def predict(model: nn.Module, spec: dict[str, Any], images: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """Class predictions for (n, 28, 28) uint8 images."""
    out = [model(_inputs(spec, images[i : i + batch_size])).argmax(1) for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def accuracy(model: nn.Module, spec: dict[str, Any], data: Split) -> float:
    return (predict(model, spec, data.images) == data.labels).float().mean().item()


@dataclass(frozen=True)
class Trained:
    """What ``train_and_save`` wrote: its path and the model's test accuracy."""

    path: Path
    arch: str
    accuracy: float  # on the whole test split
    train_images: int
    test_images: int


def train_and_save(
    data_dir: str | Path, out: str | Path, arch: str = "mlp", *, epochs: int = 3, seed: int = 0, download: bool = False
) -> Trained:
    """Train ``arch`` on the MNIST files in ``data_dir`` (less the validation split ``held_out``
    keeps back) and save it to ``out`` as float safetensors, its architecture and training
    record in the metadata. ``download``: let torchvision fetch MNIST if it is missing.

    >>> train_and_save("../shared/data/mnist", "models/mnist-mlp/model.safetensors").accuracy
    0.97...
    """
    full = load_mnist(data_dir, "train", download=download)
    test = load_mnist(data_dir, "test", download=download)
    train_split, _ = held_out(full)
    model, spec = train(train_split, arch, epochs=epochs, seed=seed)
    acc = accuracy(model, spec, test)
    info = {"arch": arch, "epochs": epochs, "seed": seed, "train_images": len(train_split), "test_accuracy": acc}
    save_model(out, model.state_dict(), spec, info)
    return Trained(Path(out), arch, acc, len(train_split), len(test))
