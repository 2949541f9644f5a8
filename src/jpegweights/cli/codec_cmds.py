"""``compress``, ``decompress`` and ``inspect``: the codec from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from jpegweights.codec import PRESETS, CodecError, EncodeConfig, summarize
from jpegweights.codec.allocate import QUALITIES
from jpegweights.files import write_atomic
from jpegweights.handlers.errors import HandlerError
from jpegweights.pipeline.calibrate import DEFAULT

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (CodecError, OSError, ValueError, HandlerError)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="state_dict (.safetensors or .pt) -> .jpw package")
    p.add_argument("input", type=Path, help=".safetensors, or a .pt/.pth state_dict (loaded with weights_only=True)")
    p.add_argument("output", type=Path)
    encode_options(p)
    p.add_argument(
        "--quality-for", action="append", default=[], metavar="NAME=Q", help="per-tensor quality, NAME may be a glob"
    )
    p.add_argument(
        "--coding-for", action="append", default=[], metavar="NAME=CODING", help="auto, jpeg, int8 or raw per tensor"
    )
    p.add_argument(
        "--architecture", type=Path, help="JSON architecture spec to embed (default: the one in the input's metadata)"
    )
    p.add_argument("--handler", type=Path, help="JSON handler spec to embed (default: the one in the input's metadata)")
    c = p.add_argument_group("calibrated qualities (docs/codec.md)")
    c.add_argument(
        "--calibrate",
        type=Path,
        metavar="DATA",
        nargs="?",
        const=Path(DEFAULT),
        help=(
            "an image folder, or a text file of one input per line: with --max-kl or --min-cosine, per-tensor "
            "qualities chosen by how far each moves the model's outputs on these inputs; without, error compensation "
            "alone, at the qualities given. Alone (or 'default'): the bundled kinds of text or images"
        ),
    )
    c.add_argument(
        "--default-calibration",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=(
            "with a fidelity target: also search on the bundled kinds of input (text: conversation, news, software, "
            "science, instructions, reviews; colour photos: people, objects, nature) and meet the target on each, so "
            "that it holds on inputs of another kind than yours. Default: on"
        ),
    )
    c.add_argument(
        "--held-out",
        type=Path,
        metavar="DATA",
        help="with a fidelity target: also measure the package made on these inputs, of a kind not searched on",
    )
    target = c.add_mutually_exclusive_group()
    target.add_argument(
        "--max-kl", type=float, help="fidelity target: mean KL divergence of the output distribution (classifiers)"
    )
    target.add_argument(
        "--min-cosine", type=float, help="fidelity target: mean cosine of the output vectors (embeddings)"
    )
    c.add_argument(
        "--compensate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=(
            "with --calibrate: code each Linear and convolution weight so that its outputs on the calibration inputs "
            "move least, each 8 columns' error corrected in the columns after (GPTQ's update; the format does not "
            "change). Default: on"
        ),
    )
    c.add_argument(
        "--rows-by-use",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=(
            "with --calibrate, a fidelity target and compensation: code a text model's token embeddings with coarser "
            "steps for the tokens used least, by how often each appears in the calibration inputs and, for those it "
            "never shows, Zipf's law on the vocabulary (text used least loses most). Default: on"
        ),
    )
    c.add_argument(
        "--qualities", default=",".join(map(str, QUALITIES)), help="the qualities to choose from (default %(default)s)"
    )
    c.add_argument(
        "--trust-code",
        action="store_true",
        help="let calibration run code the input names (a python architecture or handler class)",
    )
    c.add_argument(
        "--cache-dir",
        type=Path,
        help=(
            "where measured curves are kept, so another target on the same model and data reuses them "
            "(default: ~/.cache/jpegweights, or under $XDG_CACHE_HOME)"
        ),
    )
    p.set_defaults(func=compress)

    p = sub.add_parser(
        "fidelity",
        help=(
            "how far the packages at several qualities move a model's outputs on your inputs: the report the server "
            "and its web page show"
        ),
    )
    p.add_argument(
        "input",
        type=Path,
        help="float weights whose metadata names the architecture and handler (what import --store writes)",
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="an image folder, or a text file of one input per line, none used to choose the qualities",
    )
    p.add_argument(
        "--metric",
        required=True,
        choices=["kl", "cosine"],
        help="mean KL of the output distribution (classifiers) or mean cosine of the output vectors (embeddings)",
    )
    p.add_argument(
        "--qualities",
        default="5,10,20,50,75,90",
        help="packages at these qualities, encoded as the server encodes them (default %(default)s)",
    )
    p.add_argument(
        "--package",
        type=Path,
        help=(
            "the package the store serves: measured as its quality's row, and its encode settings used for the other "
            "qualities (as the server does)"
        ),
    )
    p.add_argument(
        "--out", type=Path, required=True, help="the report (JSON): a model folder's report.json is shown by the server"
    )
    p.add_argument(
        "--trust-code",
        action="store_true",
        help="let the model's named code run (a python architecture or handler class)",
    )
    p.set_defaults(func=fidelity)

    p = sub.add_parser("decompress", help=".jpw package -> float .safetensors")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p.set_defaults(func=decompress)

    p = sub.add_parser("inspect", help="per-tensor shape, dtype, coding, quality and bytes of a .jpw")
    p.add_argument("input", type=Path)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=inspect)


ENCODE_OPTIONS = ("quality", "qtable", "ranges", "layout", "raw_dtype", "outliers", "clamp_free", "compact")


def encode_options(p: argparse.ArgumentParser, own: dict[str, Any] | None = None) -> None:
    """The encode settings ``compress``, ``import`` and ``finetune`` share. An option not given
    takes ``--preset``'s value; with no preset, the command's ``own`` defaults, then the
    default preset's (``EncodeConfig()``)."""
    own = dict(own or {})
    shown = EncodeConfig.preset("default", **own)
    p.set_defaults(encode_defaults=own)
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help=(
            f"named encode settings the options below start from: {', '.join(sorted(PRESETS))} (seed: the seed "
            "experiment's, which make report uses); default: this command's own, shown below"
        ),
    )
    p.add_argument("--quality", "-q", type=int, help=f"JPEG quality 1..100 (default {shown.quality})")
    p.add_argument(
        "--qtable",
        choices=["auto", "flat", "standard"],
        help=f"JPEG quantization table (default {shown.qtable}; docs/codec.md)",
    )
    p.add_argument(
        "--ranges", choices=["tensor", "row"], help=f"one value range per tensor or per row (default {shown.ranges})"
    )
    p.add_argument(
        "--layout",
        help=(
            "auto, matrix (the matrix is the image), or rows:HxW (each row an HxW tile) "
            f"(default {shown.layout}; docs/codec.md)"
        ),
    )
    p.add_argument(
        "--raw-dtype",
        choices=["same", "float16"],
        help=f"float16 halves the small and 1-D float tensors (default {shown.raw_dtype})",
    )
    p.add_argument(
        "--outliers",
        type=float,
        metavar="K",
        help="store values more than K standard deviations from their row's mean apart, in float16 (docs/codec.md)",
    )
    p.add_argument(
        "--clamp-free",
        action="store_true",
        default=None,
        help=(
            "code again the JPEG blocks that would decode outside 0..255, so that compressed-domain inference uses "
            "the decoded weights exactly, up to rounding (docs/compressed-domain.md)"
        ),
    )
    p.add_argument(
        "--compact",
        action=argparse.BooleanOptionalAction,
        help=(
            "format version 4: the header deflated and a tensor-wide range stored once "
            f"(default: {'on' if shown.compact else 'off'}, "
            "and on for compress --calibrate, which searches for the fewest bytes)"
        ),
    )


def encode_config(args: argparse.Namespace, **settings: Any) -> EncodeConfig:
    """The EncodeConfig of ``encode_options``' arguments: the preset (or the command's own
    defaults), then each option given, then ``settings``."""
    given = {k: getattr(args, k) for k in ENCODE_OPTIONS if getattr(args, k) is not None}
    own = {} if args.preset else args.encode_defaults
    return EncodeConfig.preset(args.preset or "default", **{**own, **given, **settings})


def _pairs(items: list[str], convert) -> dict[str, Any]:
    out = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        if not sep or not name:
            raise ValueError(f"expected NAME=VALUE, got {item!r}")
        try:
            out[name] = convert(value)
        except ValueError as exc:
            raise ValueError(f"bad value in {item!r}: {exc}") from exc
    return out


def json_file(path: Path | None) -> dict | None:
    """A JSON object from a file (None for no file)."""
    if path is None:
        return None
    value = json.loads(path.read_text())
    if not isinstance(value, dict):
        raise ValueError(f"{path}: not a JSON object")
    return value


def compress(args: argparse.Namespace) -> int:
    from jpegweights.pipeline import compress as compress_model

    target = args.max_kl if args.max_kl is not None else args.min_cosine
    metric = "kl" if args.max_kl is not None else "cosine" if args.min_cosine is not None else None
    compact = (
        {} if args.compact is not None or args.calibrate is None else {"compact": True}
    )  # a search for the fewest bytes writes compact
    config = encode_config(
        args, quality_for=_pairs(args.quality_for, int), coding_for=_pairs(args.coding_for, str), **compact
    )
    data = DEFAULT if args.calibrate == Path(DEFAULT) else args.calibrate
    result = compress_model(
        args.input, config, data=data, target=target, metric=metric, compensate=args.compensate,
        rows_by_use=args.rows_by_use, qualities=_ints(args.qualities), cache_dir=args.cache_dir, progress=log,
        architecture=json_file(args.architecture), handler=json_file(args.handler), trust_code=args.trust_code,
        floor=args.default_calibration, held_out=args.held_out,
    )  # fmt: skip
    size = result.save(args.output)
    print(
        f"{args.output}: {size} bytes, {result.original_bytes / size:.1f}x smaller than {args.input.name} "
        f"({result.original_bytes} bytes)"
    )
    return 0


def log(line: str) -> None:
    """A progress line, on stderr."""
    print(line, file=sys.stderr, flush=True)


def fidelity(args: argparse.Namespace) -> int:
    """A report as ``evaluate`` writes one (rows of method, setting, bytes and the metric) of the
    packages at ``--qualities``, measured against the float model on ``--data``."""
    from jpegweights.pipeline import fidelity as fidelity_report

    report = fidelity_report(
        args.input, args.data, args.metric, _ints(args.qualities), package=args.package, trust_code=args.trust_code
    )
    for row in report["rows"][1:]:
        print(f"{row['setting']}: {row['bytes']} bytes, {args.metric} {row[args.metric]:.5f}")
    write_atomic(args.out, json.dumps(report, indent=1).encode())
    return 0


def _ints(text: str) -> list[int]:
    try:
        return [int(q) for q in text.split(",")]
    except ValueError:
        raise ValueError(f"--qualities takes integers separated by commas, got {text!r}") from None


def decompress(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file as save_safetensors

    from jpegweights.codec import load_file

    state = load_file(args.input)
    save_safetensors({k: v.contiguous() for k, v in state.items()}, str(args.output))
    print(f"{args.output}: {len(state)} tensors")
    return 0


def inspect(args: argparse.Namespace) -> int:
    summary = summarize(args.input.read_bytes())
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{'tensor':<32} {'shape':<18} {'dtype':<5} {'coding':<6} {'q':>3} {'table':<8} {'bytes':>10} {'ratio':>7}")
    for r in summary["tensors"]:
        q = r["quality"] if r["quality"] is not None else "-"
        ratio = f"{r['ratio']:.1f}x" if r["ratio"] else "-"
        print(
            f"{r['name']:<32} {str(r['shape']):<18} {r['dtype']:<5} {r['coding']:<6} {q:>3} {r['qtable'] or '-':<8} "
            f"{r['bytes']:>10} {ratio:>7}"
        )
    print(
        f"total: {summary['file_bytes']} bytes; {summary['ratio_vs_original']:.1f}x smaller than the original dtypes "
        f"({summary['original_bytes']} bytes), {summary['ratio_vs_float32']:.1f}x smaller than float32"
    )
    return 0
