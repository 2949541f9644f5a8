from __future__ import annotations

import io

import pytest
import torch
from PIL import Image


def png(pixels: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def digits(tmp_path_factory, mnist_test):
    """Two folders of MNIST test digits: 60 to calibrate on, 200 others to check on."""
    root = tmp_path_factory.mktemp("digits")
    for part, images in (("calibrate", mnist_test.images[:60]), ("check", mnist_test.images[60:260])):
        (root / part).mkdir()
        for i, image in enumerate(images):
            (root / part / f"{i:03d}.png").write_bytes(png(image))
    return root
