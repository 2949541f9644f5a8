"""Whole-file bytes of packages in the plain container (format version 3) and the compact one
(version 4), with the same coded tensors: what docs/codec.md's compact-container table shows.

    .venv/bin/python benchmarks/compact.py [PACKAGE ...]

Each package is written again both ways from its own stored tensors and manifest, without
re-encoding, and both must decode to identical tensors. Without arguments it measures the
bundled MNIST packages and, where ``make`` has imported them, MobileNetV2 and MiniLM.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

from jpegweights.codec import decode
from jpegweights.codec.container import FORMAT_VERSION, PACKED_VERSION, read, write
from jpegweights.codec.encoding import share_ranges
from jpegweights.codec.tiles import view2d

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = [
    "models/mnist-mlp/model-ft.jpw",
    "models/mnist-cnn/model-ft.jpw",
    "models/mnist-mlp/model-target-0.3.jpw",
    "models/mnist-cnn/model-target-0.3.jpw",
    "models/mnist-mlp/model.jpw",
    "models/mnist-cnn/model.jpw",
    "models/mobilenet_v2/model.jpw",
    "models/all-minilm-l6-v2/model.jpw",
]


def both_containers(data: bytes) -> tuple[bytes, bytes]:
    """(version 3, version 4) files holding the package's coded tensors."""
    stored, manifest = read(data)
    plain, compact = dict(stored), dict(stored)
    for entry in manifest["tensors"].values():
        if "scale" in entry:
            rows, _ = view2d(entry["shape"])
            for key in (entry["scale"], entry["offset"]):
                plain[key] = stored[key].expand(rows)  # one per row, in its stored dtype
            share_ranges(entry, compact)
    v3, v4 = copy.deepcopy(manifest), copy.deepcopy(manifest)
    v3["version"], v4["version"] = FORMAT_VERSION, PACKED_VERSION
    v3.get("config", {}).pop("compact", None)
    if "config" in v4:
        v4["config"]["compact"] = True
    return write(plain, v3), write(compact, v4, packed=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("packages", nargs="*", type=Path)
    args = p.parse_args()
    paths = args.packages or [ROOT / p for p in DEFAULT if (ROOT / p).exists()]
    print(f"{'package':<40} {'version 3':>12} {'version 4':>12} {'saved':>7}")
    for path in paths:
        v3, v4 = both_containers(path.read_bytes())
        a, b = decode(v3), decode(v4)
        if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
            sys.exit(f"{path}: the two containers decode to different tensors")
        name = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
        print(f"{name:<40} {len(v3):>12,} {len(v4):>12,} {1 - len(v4) / len(v3):>7.1%}")


if __name__ == "__main__":
    main()
