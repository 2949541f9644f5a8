"""``train`` and ``evaluate``: the seed experiment from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from jpegweights.codec import PRESETS, EncodeConfig
from jpegweights.pipeline import load_model, load_state_dict, save_model
from jpegweights.training.finetune import FinetuneError
from jpegweights.training.mnist import DataError

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (DataError, FinetuneError)
VAL_SIZE = 5000  # the last training images: held out by train, they validate --target-drop and finetune


def held_out(full):
    """(training images, the last VAL_SIZE as the validation split)."""
    from jpegweights.training.mnist import Split

    return full.subset(len(full) - VAL_SIZE), Split(full.images[-VAL_SIZE:], full.labels[-VAL_SIZE:])


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
    p.add_argument("--finetuned", type=Path, action="append", default=[], metavar="PACKAGE", help="add a row for a package 'jpegweights finetune' wrote")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default", help="the encode settings each quality's row, the search and --package use (default %(default)s; seed: the seed experiment's, which make report uses)")
    p.set_defaults(func=evaluate_cmd)

    from .codec_cmds import encode_options

    p = sub.add_parser("finetune", help="fine-tune a model through its own coding (straight-through), so that a package at a low quality stays accurate")
    p.add_argument("model", type=Path, help=".safetensors written by 'jpegweights train' (float weights and architecture)")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data-dir", type=Path, help="IDX files named as MNIST's (train-images-idx3-ubyte[.gz], ...); the last 5,000 training images are the validation split")
    data.add_argument("--data", type=Path, help="unlabelled inputs for the model's handler, as compress --calibrate takes them (an image folder, or a text file of one input per line): distillation from the float model; MODEL needs an architecture and a handler in its metadata (what import --store writes)")
    p.add_argument("--validation", type=float, default=0.2, help="with --data: the fraction of inputs (the last, by name or line) held out to choose the epoch (default %(default)s)")
    p.add_argument("--out", type=Path, required=True, help="the fine-tuned .jpw (written only when fine-tuning succeeds)")
    encode_options(p, FINETUNE_DEFAULTS)
    p.add_argument("--coding-for", action="append", default=[], metavar="NAME=CODING", help="jpeg, int8 or raw per tensor (default: as the codec chooses for the float model)")
    p.add_argument("--quality-for", action="append", default=[], metavar="NAME=Q", help="per-tensor quality")
    p.add_argument("--lossless-below", type=int, help=f"tensors with fewer values are stored raw (default {FINETUNE_DEFAULTS['lossless_below']})")
    p.add_argument("--epochs", type=int, help="default 6; with --data, 60")
    p.add_argument("--lr", type=float, help="Adam's learning rate (default 1e-3; with --data, 1e-5: pretrained models move little)")
    p.add_argument("--batch-size", type=int, default=None, help="default 128; with --data, 16")
    p.add_argument("--patience", type=int, default=None, help="stop after this many epochs without a better coded validation figure (default 3; with --data, 10)")
    p.add_argument("--distill", action="store_true", help="ignore the labels: learn the float model's outputs (KL divergence); the training labels file may then be missing (the test labels still score the report)")
    p.add_argument("--rederive", action="store_true", help="re-choose each tensor's coding and layout at each epoch")
    p.add_argument("--cosine", action=argparse.BooleanOptionalAction, default=True, help="decay the learning rate to 0 along a cosine over the epochs (default: on; docs/finetune.md)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA when present")
    p.add_argument("--report", type=Path, help="also write report.json, report.md and a plot here")
    p.add_argument("--trust-code", action="store_true", help="with --data: let the model's named code run (a python architecture or handler class)")
    p.set_defaults(func=finetune_cmd)


# What fine-tuning starts from: quality 5 with a flat table and one range per tensor (the MLP's
# 2 KB of per-row scales cost more than the accuracy they buy once training adapts), matrices of
# 256 values and more coded, the rest in float16, in the compact format (its deflated header is
# a third of the CNN's file otherwise; docs/finetune.md measures the choices).
FINETUNE_DEFAULTS = {"quality": 5, "qtable": "flat", "ranges": "tensor", "raw_dtype": "float16", "lossless_below": 256, "compact": True}


def finetune_config(args: argparse.Namespace) -> EncodeConfig:
    """``finetune``'s encode settings: its own defaults (or ``--preset``'s), then the options given."""
    from .codec_cmds import _pairs, encode_config

    lossless = {} if args.lossless_below is None else {"lossless_below": args.lossless_below}
    return encode_config(args, quality_for=_pairs(args.quality_for, int), coding_for=_pairs(args.coding_for, str), **lossless)


def train_cmd(args: argparse.Namespace) -> int:
    from jpegweights.training.mnist import load_mnist
    from jpegweights.training.train import accuracy, train

    full = load_mnist(args.data_dir, "train", download=args.download)
    test = load_mnist(args.data_dir, "test", download=args.download)
    train_split, _ = held_out(full)
    model, spec = train(train_split, args.arch, epochs=args.epochs, seed=args.seed)
    acc = accuracy(model, spec, test)
    info = {"arch": args.arch, "epochs": args.epochs, "seed": args.seed, "train_images": len(train_split), "test_accuracy": acc}
    save_model(args.out, model.state_dict(), spec, info)
    print(f"{args.out}: {args.arch}, test accuracy {acc * 100:.2f}% ({len(test)} images)")
    return 0


def evaluate_cmd(args: argparse.Namespace) -> int:
    import dataclasses

    from jpegweights.codec import decode, encode, load_manifest, save_file
    from jpegweights.training.evaluate import evaluate, search_qualities, tiles_picture, write_report
    from jpegweights.training.mnist import load_mnist

    qualities = [int(q) for q in args.qualities.split(",") if q.strip()]
    state, spec = load_model(args.model)
    test = load_mnist(args.data_dir, "test")
    if args.limit:
        test = test.subset(args.limit)
    name = args.name or (args.model.parent.name if args.model.stem == "model" else args.model.stem)
    out = args.out or Path("reports") / name
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    notes = [f"Model: `{args.model.name}`; test set: the {len(test):,} test images of `--data-dir` (IDX); bytes are whole-model files."]
    extra, package_config, settings = [], None, EncodeConfig.preset(args.preset)
    if args.target_drop is not None:
        full = load_mnist(args.data_dir, "train")
        _, validation = held_out(full)
        package_config = search_qualities(state, spec, validation, args.target_drop / 100, log=log, settings=settings)
        chosen = {**dict(package_config.coding_for), **{k: f"jpeg q{q}" for k, q in package_config.quality_for}}
        notes.append(f"--target-drop {args.target_drop}: per-tensor codings chosen on {VAL_SIZE:,} held-out training images: {json.dumps(chosen)}")
        extra.append(("jpegweights --target-drop", f"{args.target_drop} points", encode(state, package_config, spec)))
    for path in args.finetuned:
        data = path.read_bytes()
        extra.append(("jpegweights finetune", f"q{load_manifest(data)['config']['quality']}", data))
    rows = evaluate(state, spec, test, qualities, extra, log=log, settings=settings)
    write_report(rows, out, f"{name}: accuracy against size", notes)
    first = next((k for k, v in state.items() if v.dim() == 2 and v.shape[1] == 784), None)
    if first:
        decoded = decode(encode({first: state[first]}, dataclasses.replace(settings, quality=20, coding="jpeg")))[first]
        tiles_picture(state[first], decoded, out / "tiles_q20.png")
    if args.package:
        size = save_file(state, args.package, package_config or dataclasses.replace(settings, quality=20), spec)
        print(f"{args.package}: {size} bytes")
    print((out / "report.md").read_text())
    return 0


def finetune_cmd(args: argparse.Namespace) -> int:
    unlabelled = args.data is not None
    for name, labelled, handler_based in (("epochs", 6, 60), ("lr", 1e-3, 1e-5), ("batch_size", 128, 16), ("patience", 3, 10)):
        if getattr(args, name) is None:
            setattr(args, name, handler_based if unlabelled else labelled)
    return distill_cmd(args) if unlabelled else idx_finetune_cmd(args)


def distill_cmd(args: argparse.Namespace) -> int:
    """``finetune --data``: distillation through the model's handler on the user's inputs."""
    import dataclasses

    from jpegweights.codec import encode
    from jpegweights.files import write_atomic
    from jpegweights.pipeline import read_inputs
    from jpegweights.training.distill import distill
    from jpegweights.training.finetune import pin

    if args.distill or args.rederive or args.report:
        raise ValueError("--data always distills; --distill, --rederive and --report go with --data-dir")
    if not 0 < args.validation < 1:
        raise ValueError(f"--validation must be a fraction between 0 and 1, got {args.validation}")
    state, architecture, handler = load_state_dict(args.model)
    if architecture is None:
        raise ValueError(f"{args.model}: --data needs an architecture in its metadata, and the handler if not the default (jpegweights train and import --store write them)")
    request = read_inputs(args.data)
    field = "images" if request.images is not None else "text"
    inputs = getattr(request, field)
    held = max(1, round(len(inputs) * args.validation))
    if len(inputs) - held < 1:
        raise ValueError(f"{args.data}: {len(inputs)} input(s); fine-tuning needs at least 2 (one to train on, one to validate)")
    train, validation = (dataclasses.replace(request, **{field: part}) for part in (inputs[:-held], inputs[-held:]))
    config = finetune_config(args)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    manifest = {"architecture": architecture, **({"handler": handler} if handler is not None else {})}
    pinned = pin(state, config)
    result = distill(state, manifest, train, validation, pinned, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, patience=args.patience,
                     cosine=args.cosine, seed=args.seed, device=device, trust_code=args.trust_code, log=log)  # fmt: skip
    f32 = sum(t.numel() * 4 for t in state.values())
    what = "KL" if result.metric == "kl" else "1 - cosine"
    print(f"{len(inputs) - held} inputs trained on, {held} held out; {what} against the float model on those {held}:")
    for method, weights, value in (("jpegweights (post-training)", state, result.start), ("jpegweights finetune", result.state, result.best)):
        data = encode(weights, result.config, architecture, handler)
        print(f"{method:<28} q{result.config.quality:<4} {len(data):>10,} B {f32 / len(data):7.1f}x  {what} {value:.5f}")
    write_atomic(args.out, data)  # the fine-tuned package: the last row's bytes
    print(f"{args.out}: {len(data)} bytes, {len(result.history)} epoch(s){'; ' + result.stopped if result.stopped else ''}")
    return 0


def idx_finetune_cmd(args: argparse.Namespace) -> int:
    from jpegweights.codec import decode, encode
    from jpegweights.handlers import build
    from jpegweights.training.evaluate import Row, float32_bytes, write_report
    from jpegweights.training.finetune import finetune, pin
    from jpegweights.training.mnist import load_mnist
    from jpegweights.files import write_atomic
    from jpegweights.training.train import accuracy

    state, spec = load_model(args.model)
    config = finetune_config(args)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    full, test = load_mnist(args.data_dir, "train", labelled=not args.distill), load_mnist(args.data_dir, "test")
    if len(full) <= 2 * VAL_SIZE:
        raise FinetuneError(f"{args.data_dir} has {len(full)} training images: fine-tuning needs more than {2 * VAL_SIZE} (the last {VAL_SIZE} validate)")
    train_split, validation = held_out(full)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    pinned = pin(state, config)
    result = finetune(state, spec, train_split, validation, pinned, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, patience=args.patience,
                      distill=args.distill, rederive=args.rederive, cosine=args.cosine, seed=args.seed, device=device, log=log)  # fmt: skip
    f32 = float32_bytes(state)
    model = build(spec).eval()
    rows = []
    for method, weights, cfg in (("float32", state, None), ("jpegweights (post-training)", state, pinned), ("jpegweights finetune", result.state, result.config)):
        data = encode(weights, cfg, spec) if cfg is not None else None
        model.load_state_dict(decode(data) if data is not None else weights)
        acc = accuracy(model, spec, test)
        base = acc if not rows else rows[0].accuracy
        nbytes = len(data) if data is not None else f32
        rows.append(Row(method, "-" if cfg is None else f"q{cfg.quality}", nbytes, f32 / nbytes, acc, acc - base))
    write_atomic(args.out, data)  # the fine-tuned package: the last row's bytes
    for r in rows:
        print(f"{r.method:<28} {r.setting:<5} {r.bytes:>10,} B {r.ratio_vs_float32:7.1f}x  test accuracy {r.accuracy * 100:.2f}% ({r.change * 100:+.2f})")
    print(f"{args.out}: {len(data)} bytes, {len(result.history)} epoch(s){'; ' + result.stopped if result.stopped else ''}")
    if rows[-1].change < -0.01:
        log(f"warning: the fine-tuned package is {-rows[-1].change * 100:.2f} points below the float model on the test set: raise the quality (or --quality-for the layers that matter), or train longer")
    if args.report:
        flags = [f"--quality {config.quality}", *(f"--coding-for {c}" for c in args.coding_for), *(f"--quality-for {q}" for q in args.quality_for), f"--epochs {args.epochs}", f"--lr {args.lr:g}"]
        notes = [f"`jpegweights finetune {args.model.name} {' '.join(flags)}` (table {config.qtable}, ranges per {config.ranges}{', cosine decay' if args.cosine else ''}): {len(train_split):,} training images, {VAL_SIZE:,} validation, {len(test):,} test; bytes are whole-model files; {len(result.history)} epoch(s) run."]
        write_report(rows, args.report, f"{args.model.parent.name}: fine-tuned through the codec", notes)
    return 0
