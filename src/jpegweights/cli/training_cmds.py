"""``train``, ``evaluate`` and ``finetune``: each parses its arguments into one ``jpegweights.training`` call
and prints what it returns."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jpegweights.codec import PRESETS, EncodeConfig
from jpegweights.training.finetune import FINETUNE_DEFAULTS, Finetuned, FinetuneError
from jpegweights.training.mnist import DataError

if TYPE_CHECKING:
    from jpegweights.training.distill import Distilled

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (DataError, FinetuneError)


def register(sub: argparse._SubParsersAction) -> None:
    add_train(sub)
    add_evaluate(sub)
    add_finetune(sub)


def add_train(sub: argparse._SubParsersAction) -> None:
    from jpegweights.training.train import ARCHITECTURES

    p = sub.add_parser("train", help="train the seed MLP (or a small CNN) on MNIST, save float safetensors")
    p.add_argument("--data-dir", type=Path, required=True, help="directory with the MNIST IDX .gz files")
    p.add_argument("--out", type=Path, required=True, help="output .safetensors (architecture in its metadata)")
    p.add_argument("--arch", choices=sorted(ARCHITECTURES), default="mlp")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--download", action="store_true", help="let torchvision download MNIST if it is missing (needs internet)"
    )
    p.set_defaults(func=train_cmd)


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="rate-distortion report of a trained model: JPEG qualities and baselines")
    p.add_argument("model", type=Path, help=".safetensors written by 'jpegweights train'")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--qualities", default="100,90,75,50,30,20,10,5,1", help="comma-separated JPEG qualities")
    p.add_argument("--out", type=Path, help="report directory (default: reports/<name>)")
    p.add_argument(
        "--name", help="model name in the report (default: the model's folder for model.safetensors, else its stem)"
    )
    p.add_argument(
        "--target-drop",
        type=float,
        help="search per-tensor qualities within this many accuracy points (validation split)",
    )
    p.add_argument("--limit", type=int, help="evaluate on the first N test images only (quick runs)")
    p.add_argument("--package", type=Path, help="also write the --target-drop (else quality 20) package here")
    p.add_argument(
        "--finetuned",
        type=Path,
        action="append",
        default=[],
        metavar="PACKAGE",
        help="add a row for a package 'jpegweights finetune' wrote",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="default",
        help="the encode settings each quality's row, the search and --package use (default %(default)s; "
        "seed: the seed experiment's, which make report uses)",
    )
    p.set_defaults(func=evaluate_cmd)


def add_finetune(sub: argparse._SubParsersAction) -> None:
    from .codec_cmds import encode_options

    p = sub.add_parser(
        "finetune",
        help="fine-tune a model through its own coding (straight-through), "
        "so that a package at a low quality stays accurate",
    )
    p.add_argument(
        "model", type=Path, help=".safetensors written by 'jpegweights train' (float weights and architecture)"
    )
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument(
        "--data-dir",
        type=Path,
        help="IDX files named as MNIST's (train-images-idx3-ubyte[.gz], ...); "
        "the last 5,000 training images are the validation split",
    )
    data.add_argument(
        "--data",
        type=Path,
        help="unlabelled inputs for the model's handler, as compress --calibrate takes them (an image folder, "
        "or a text file of one input per line): distillation from the float model; MODEL needs an architecture "
        "and a handler in its metadata (what import --store writes)",
    )
    p.add_argument(
        "--validation",
        type=float,
        default=0.2,
        help="with --data: the fraction of inputs (the last, by name or line) held out to choose the epoch "
        "(default %(default)s)",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="the fine-tuned .jpw (written only when fine-tuning succeeds)"
    )
    encode_options(p, FINETUNE_DEFAULTS)
    p.add_argument(
        "--coding-for",
        action="append",
        default=[],
        metavar="NAME=CODING",
        help="jpeg, int8 or raw per tensor (default: as the codec chooses for the float model)",
    )
    p.add_argument("--quality-for", action="append", default=[], metavar="NAME=Q", help="per-tensor quality")
    p.add_argument(
        "--lossless-below",
        type=int,
        help=f"tensors with fewer values are stored raw (default {FINETUNE_DEFAULTS['lossless_below']})",
    )
    add_training_options(p)
    p.set_defaults(func=finetune_cmd)


def add_training_options(p: argparse.ArgumentParser) -> None:
    """``finetune``'s training options; those left None take the library's defaults for the kind of data."""
    p.add_argument("--epochs", type=int, help="default 6; with --data, 60")
    p.add_argument(
        "--lr", type=float, help="Adam's learning rate (default 1e-3; with --data, 1e-5: pretrained models move little)"
    )
    p.add_argument("--batch-size", type=int, default=None, help="default 128; with --data, 16")
    p.add_argument(
        "--patience",
        type=int,
        default=None,
        help="stop after this many epochs without a better coded validation figure (default 3; with --data, 10)",
    )
    p.add_argument(
        "--distill",
        action="store_true",
        help="ignore the labels: learn the float model's outputs (KL divergence); the training labels file may "
        "then be missing (the test labels still score the report)",
    )
    p.add_argument("--rederive", action="store_true", help="re-choose each tensor's coding and layout at each epoch")
    p.add_argument(
        "--cosine",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="decay the learning rate to 0 along a cosine over the epochs (default: on; docs/finetune.md)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA when present")
    p.add_argument("--report", type=Path, help="also write report.json, report.md and a plot here")
    p.add_argument(
        "--trust-code",
        action="store_true",
        help="with --data: let the model's named code run (a python architecture or handler class)",
    )


def finetune_config(args: argparse.Namespace) -> EncodeConfig:
    """``finetune``'s encode settings: its own defaults (or ``--preset``'s), then the options given."""
    from .codec_cmds import _pairs, encode_config

    lossless = {} if args.lossless_below is None else {"lossless_below": args.lossless_below}
    pairs = {"quality_for": _pairs(args.quality_for, int), "coding_for": _pairs(args.coding_for, str)}
    return encode_config(args, **pairs, **lossless)


def stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def train_cmd(args: argparse.Namespace) -> int:
    from jpegweights.training.train import train_and_save

    done = train_and_save(
        args.data_dir, args.out, args.arch, epochs=args.epochs, seed=args.seed, download=args.download
    )
    print(f"{args.out}: {args.arch}, test accuracy {done.accuracy * 100:.2f}% ({done.test_images} images)")
    return 0


def evaluate_cmd(args: argparse.Namespace) -> int:
    from jpegweights.training.evaluate import evaluate_model

    qualities = [int(q) for q in args.qualities.split(",") if q.strip()]
    result = evaluate_model(
        args.model,
        args.data_dir,
        qualities,
        settings=EncodeConfig.preset(args.preset),
        target_drop=args.target_drop,
        finetuned=args.finetuned,
        out=args.out,
        package=args.package,
        limit=args.limit,
        name=args.name,
        log=stderr,
    )
    if args.package:
        print(f"{args.package}: {result.package_bytes} bytes")
    print((result.out / "report.md").read_text())
    return 0


TRAINING_OPTIONS = ("epochs", "lr", "batch_size", "patience")  # None: the library's default for the kind of data


def finetune_cmd(args: argparse.Namespace) -> int:
    if args.data is not None and (args.distill or args.rederive or args.report):
        raise ValueError("--data always distills; --distill, --rederive and --report go with --data-dir")
    config = finetune_config(args)
    given = {k: getattr(args, k) for k in TRAINING_OPTIONS if getattr(args, k) is not None}
    common = dict(given, cosine=args.cosine, seed=args.seed, device=args.device, log=stderr)
    return (distill_cmd if args.data is not None else idx_finetune_cmd)(args, config, common)


def idx_finetune_cmd(args: argparse.Namespace, config: EncodeConfig, common: dict[str, Any]) -> int:
    """``finetune --data-dir``: fine-tuning on labelled IDX images, reported on the test split."""
    from jpegweights.training.finetune import finetune_idx

    run = finetune_idx(
        args.model,
        args.data_dir,
        config,
        args.out,
        distill=args.distill,
        rederive=args.rederive,
        report=args.report,
        **common,
    )
    for r in run.rows:
        print(
            f"{r.method:<28} {r.setting:<5} {r.bytes:>10,} B {r.ratio_vs_float32:7.1f}x  "
            f"test accuracy {r.accuracy * 100:.2f}% ({r.change * 100:+.2f})"
        )
    print_written(args.out, run.rows[-1].bytes, run.finetuned)
    if run.rows[-1].change < -0.01:
        stderr(
            f"warning: the fine-tuned package is {-run.rows[-1].change * 100:.2f} points below the float model "
            "on the test set: raise the quality (or --quality-for the layers that matter), or train longer"
        )
    return 0


def distill_cmd(args: argparse.Namespace, config: EncodeConfig, common: dict[str, Any]) -> int:
    """``finetune --data``: distillation through the model's handler on the user's inputs."""
    from jpegweights.training.distill import distill_files

    run = distill_files(
        args.model, args.data, config, args.out, validation=args.validation, trust_code=args.trust_code, **common
    )
    result = run.distilled
    what = "KL" if result.metric == "kl" else "1 - cosine"
    print(f"{run.trained} inputs trained on, {run.held} held out; {what} against the float model on those {run.held}:")
    for method, nbytes, value in (
        ("jpegweights (post-training)", run.post_training_bytes, result.start),
        ("jpegweights finetune", run.package_bytes, result.best),
    ):
        print(
            f"{method:<28} q{result.config.quality:<4} {nbytes:>10,} B {run.float32_bytes / nbytes:7.1f}x  "
            f"{what} {value:.5f}"
        )
    print_written(args.out, run.package_bytes, result)
    return 0


def print_written(out: Path, nbytes: int, result: Finetuned | Distilled) -> None:
    """The package's line: its size, the epochs run and why it stopped early, if it did."""
    print(f"{out}: {nbytes} bytes, {len(result.history)} epoch(s){'; ' + result.stopped if result.stopped else ''}")
