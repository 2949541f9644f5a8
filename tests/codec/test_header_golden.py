"""Golden bytes of the container header for a fixed input (raw and int8 codings: no libjpeg in
the loop, so the bytes are ours alone). Regenerate only on a deliberate format change:

    python -m tests.codec.test_header_golden
"""

from __future__ import annotations

import struct
from pathlib import Path

import torch

from jpegweights.codec import EncodeConfig, encode

GOLDEN = Path(__file__).parent / "golden" / "raw_int8.header"


def fixed_package() -> bytes:
    state = {
        "layer.weight": torch.linspace(-1, 1, 8 * 32).reshape(8, 32),
        "layer.bias": torch.tensor([0.5, -0.25, 0.0, 1.0]),
        "steps": torch.tensor([3], dtype=torch.int64),
    }
    return encode(state, EncodeConfig.preset("seed", coding_for={"layer.weight": "int8"}))


def header_bytes(data: bytes) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    return data[: 8 + n]


def test_header_bytes_match_golden():
    assert header_bytes(fixed_package()) == GOLDEN.read_bytes()


if __name__ == "__main__":
    GOLDEN.write_bytes(header_bytes(fixed_package()))
    print(f"wrote {GOLDEN}")
