"""``train`` and ``evaluate``: the seed experiment from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from jpegweights.training.mnist import DataError

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (DataError,)
VAL_SIZE = 5000  # the last training images, held out for --target-drop


def register(sub: argparse._SubParsersAction) -> None:
    from jpegweights.training.train import ARCHITECTURES

    p = sub.add_parser("train", help="train the seed MLP (or a small CNN) on MNIST, save float safetensors")
    p.add_argument("--data-dir", type=Path, required=True, help="directory with the MNIST IDX .gz files")
    p.add_argument("--out", type=Path, required=True, help="output .safetensors (architecture in its metadata)")
    p.add_argument("--arch", choices=sorted(ARCHITECTURES), default="mlp")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--download", action="store_true", help="let torchvision download MNIST if it is missing (needs internet)")
    p.set_defaults(func=train_cmd)

    p = sub.add_parser("evaluate", help="rate-distortion report of a trained model: JPEG qualities and baselines")
    p.add_argument("model", type=Path, help=".safetensors written by 'jpegweights train'")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--qualities", default="100,90,75,50,30,20,10,5,1", help="comma-separated JPEG qualities")
    p.add_argument("--out", type=Path, help="report directory (default: reports/<name>)")
    p.add_argument("--name", help="model name in the report (default: the model's folder for model.safetensors, else its stem)")
    p.add_argument("--target-drop", type=float, help="search per-tensor qualities within this many accuracy points (validation split)")
    p.add_argument("--limit", type=int, help="evaluate on the first N test images only (quick runs)")
    p.add_argument("--package", type=Path, help="also write the --target-drop (else quality 20) package here")
    p.set_defaults(func=evaluate_cmd)


def save_model(path: Path, state: dict[str, torch.Tensor], spec: dict[str, Any], info: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"architecture": json.dumps(spec), "training": json.dumps(info)})


def load_model(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from jpegweights.handlers import validate_spec

    from .codec_cmds import load_state_dict

    state, spec, _ = load_state_dict(path)
    if spec is None:
        raise ValueError(f"{path}: no architecture in its metadata (train it with 'jpegweights train')")
    return state, validate_spec(spec)


def train_cmd(args: argparse.Namespace) -> int:
    from jpegweights.training.mnist import load_mnist
    from jpegweights.training.train import accuracy, train

    full = load_mnist(args.data_dir, "train", download=args.download)
    test = load_mnist(args.data_dir, "test", download=args.download)
    train_split = full.subset(len(full) - VAL_SIZE)
    model, spec = train(train_split, args.arch, epochs=args.epochs, seed=args.seed)
    acc = accuracy(model, spec, test)
    info = {"arch": args.arch, "epochs": args.epochs, "seed": args.seed, "train_images": len(train_split), "test_accuracy": acc}
    save_model(args.out, model.state_dict(), spec, info)
    print(f"{args.out}: {args.arch}, test accuracy {acc * 100:.2f}% ({len(test)} images)")
    return 0


def evaluate_cmd(args: argparse.Namespace) -> int:
    from jpegweights.codec import EncodeConfig, decode, encode, save_file
    from jpegweights.training.evaluate import evaluate, search_qualities, tiles_picture, write_report
    from jpegweights.training.mnist import Split, load_mnist

    qualities = [int(q) for q in args.qualities.split(",") if q.strip()]
    state, spec = load_model(args.model)
    test = load_mnist(args.data_dir, "test")
    if args.limit:
        test = test.subset(args.limit)
    name = args.name or (args.model.parent.name if args.model.stem == "model" else args.model.stem)
    out = args.out or Path("reports") / name
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    notes = [f"Model: `{args.model.name}`; test set: {len(test):,} MNIST images; bytes are whole-model files."]
    extra, package_config = [], None
    if args.target_drop is not None:
        full = load_mnist(args.data_dir, "train")
        validation = Split(full.images[-VAL_SIZE:], full.labels[-VAL_SIZE:])
        package_config = search_qualities(state, spec, validation, args.target_drop / 100, log=log)
        chosen = {**dict(package_config.coding_for), **{k: f"jpeg q{q}" for k, q in package_config.quality_for}}
        notes.append(f"--target-drop {args.target_drop}: per-tensor codings chosen on {VAL_SIZE:,} held-out training images: {json.dumps(chosen)}")
        extra.append(("jpegweights --target-drop", f"{args.target_drop} points", encode(state, package_config, spec)))
    rows = evaluate(state, spec, test, qualities, extra, log=log)
    write_report(rows, out, f"{name}: accuracy against size", notes)
    first = next((k for k, v in state.items() if v.dim() == 2 and v.shape[1] == 784), None)
    if first:
        decoded = decode(encode({first: state[first]}, EncodeConfig(quality=20, coding="jpeg")))[first]
        tiles_picture(state[first], decoded, out / "tiles_q20.png")
    if args.package:
        size = save_file(state, args.package, package_config or EncodeConfig(quality=20), spec)
        print(f"{args.package}: {size} bytes")
    print((out / "report.md").read_text())
    return 0
