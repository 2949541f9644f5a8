"""``compress``, ``decompress`` and ``inspect``: the codec from the command line."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from jpegweights.codec import CodecError, EncodeConfig, save_file, summarize
from jpegweights.codec.allocate import QUALITIES
from jpegweights.handlers.errors import CalibrationError, HandlerError
from jpegweights.pipeline import load_state_dict

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (CodecError, OSError, ValueError, HandlerError)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="state_dict (.safetensors or .pt) -> .jpw package")
    p.add_argument("input", type=Path, help=".safetensors, or a .pt/.pth state_dict (loaded with weights_only=True)")
    p.add_argument("output", type=Path)
    encode_options(p, EncodeConfig())
    p.add_argument("--quality-for", action="append", default=[], metavar="NAME=Q", help="per-tensor quality, NAME may be a glob")
    p.add_argument("--coding-for", action="append", default=[], metavar="NAME=CODING", help="auto, jpeg, int8 or raw per tensor")
    p.add_argument("--architecture", type=Path, help="JSON architecture spec to embed (default: the one in the input's metadata)")
    p.add_argument("--handler", type=Path, help="JSON handler spec to embed (default: the one in the input's metadata)")
    c = p.add_argument_group("calibrated qualities (docs/codec.md)")
    c.add_argument("--calibrate", type=Path, metavar="DATA", help="an image folder, or a text file of one input per line: with --max-kl or --min-cosine, per-tensor qualities chosen by how far each moves the model's outputs on these inputs; without, error compensation alone, at the qualities given")
    target = c.add_mutually_exclusive_group()
    target.add_argument("--max-kl", type=float, help="fidelity target: mean KL divergence of the output distribution (classifiers)")
    target.add_argument("--min-cosine", type=float, help="fidelity target: mean cosine of the output vectors (embeddings)")
    c.add_argument("--compensate", action=argparse.BooleanOptionalAction, default=True, help="with --calibrate: code each Linear and convolution weight so that its outputs on the calibration inputs move least, each 8 columns' error corrected in the columns after (GPTQ's update; the format does not change). Default: on")
    c.add_argument("--rows-by-use", action=argparse.BooleanOptionalAction, default=True, help="with --calibrate, a fidelity target and compensation: code a text model's token embeddings with coarser steps for the tokens used least, by how often each appears in the calibration inputs and, for those it never shows, Zipf's law on the vocabulary (text used least loses most). Default: on")
    c.add_argument("--qualities", default=",".join(map(str, QUALITIES)), help="the qualities to choose from (default %(default)s)")
    c.add_argument("--trust-code", action="store_true", help="let calibration run code the input names (a python architecture or handler class)")
    c.add_argument("--cache-dir", type=Path, help="where measured curves are kept, so another target on the same model and data reuses them (default: ~/.cache/jpegweights, or under $XDG_CACHE_HOME)")
    p.set_defaults(func=compress, compact=None)  # None: compact with --calibrate, as every search for the fewest bytes writes

    p = sub.add_parser("fidelity", help="how far the packages at several qualities move a model's outputs on your inputs: the report the server and its web page show")
    p.add_argument("input", type=Path, help="float weights whose metadata names the architecture and handler (what import --store writes)")
    p.add_argument("--data", type=Path, required=True, help="an image folder, or a text file of one input per line, none used to choose the qualities")
    p.add_argument("--metric", required=True, choices=["kl", "cosine"], help="mean KL of the output distribution (classifiers) or mean cosine of the output vectors (embeddings)")
    p.add_argument("--qualities", default="5,10,20,50,75,90", help="packages at these qualities, encoded as the server encodes them (default %(default)s)")
    p.add_argument("--package", type=Path, help="the package the store serves: measured as its quality's row, and its encode settings used for the other qualities (as the server does)")
    p.add_argument("--out", type=Path, required=True, help="the report (JSON): a model folder's report.json is shown by the server")
    p.add_argument("--trust-code", action="store_true", help="let the model's named code run (a python architecture or handler class)")
    p.set_defaults(func=fidelity)

    p = sub.add_parser("decompress", help=".jpw package -> float .safetensors")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p.set_defaults(func=decompress)

    p = sub.add_parser("inspect", help="per-tensor shape, dtype, coding, quality and bytes of a .jpw")
    p.add_argument("input", type=Path)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=inspect)


def encode_options(p: argparse.ArgumentParser, defaults: EncodeConfig) -> None:
    """The encode settings ``compress`` and ``import`` share, with each command's defaults."""
    p.add_argument("--quality", "-q", type=int, default=defaults.quality, help="JPEG quality 1..100 (default %(default)s)")
    p.add_argument("--qtable", default=defaults.qtable, choices=["auto", "flat", "standard"], help="JPEG quantization table (default %(default)s; docs/codec.md)")
    p.add_argument("--ranges", default=defaults.ranges, choices=["tensor", "row"], help="one value range per tensor or per row (default %(default)s)")
    p.add_argument("--layout", default=defaults.layout, help="auto, matrix (the matrix is the image), or rows:HxW (each row an HxW tile) (default %(default)s; docs/codec.md)")
    p.add_argument("--raw-dtype", default=defaults.raw_dtype, choices=["same", "float16"], help="float16 halves the small and 1-D float tensors (default %(default)s)")
    p.add_argument("--outliers", type=float, metavar="K", help="store values more than K standard deviations from their row's mean apart, in float16 (docs/codec.md)")
    p.add_argument("--clamp-free", action="store_true", help="code again the JPEG blocks that would decode outside 0..255, so that compressed-domain inference uses the decoded weights exactly, up to rounding (docs/compressed-domain.md)")
    p.add_argument("--compact", action=argparse.BooleanOptionalAction, default=defaults.compact, help="format version 4: the header deflated and a tensor-wide range stored once (default: on for import, and for finetune, --calibrate and --target-drop, which search for the fewest bytes; off otherwise)")


def encode_config(args: argparse.Namespace, **settings: Any) -> EncodeConfig:
    """The EncodeConfig of ``encode_options``' arguments, plus ``settings``."""
    return EncodeConfig(quality=args.quality, qtable=args.qtable, ranges=args.ranges, layout=args.layout, raw_dtype=args.raw_dtype, outliers=args.outliers, clamp_free=args.clamp_free, compact=args.compact, **settings)


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
    target = args.max_kl if args.max_kl is not None else args.min_cosine
    if target is not None and args.calibrate is None:
        raise ValueError("a fidelity target (--max-kl, --min-cosine) needs calibration data: --calibrate DATA")
    if args.calibrate is not None and target is None and not args.compensate:
        raise ValueError("--calibrate without a fidelity target (--max-kl, --min-cosine) only compensates errors: drop --no-compensate")
    if args.calibrate is not None and args.quality_for:
        raise ValueError("--quality-for and --calibrate both set per-tensor qualities: give one")
    if args.compact is None:
        args.compact = args.calibrate is not None
    config = encode_config(args, quality_for=_pairs(args.quality_for, int), coding_for=_pairs(args.coding_for, str))
    state, architecture, handler = load_state_dict(args.input)
    architecture = json_file(args.architecture) or architecture
    handler = json_file(args.handler) or handler
    hessians = None
    if args.calibrate is not None and architecture is None:
        raise CalibrationError("calibration runs the model, but the input names no architecture: give --architecture (and --handler)")
    if args.calibrate is not None and target is None:
        hessians = compensated(args, state, architecture, handler)
    elif args.calibrate is not None:
        config, hessians = calibrated(args, state, config, architecture, handler)
    size = save_file(state, args.output, config, architecture, handler, hessians=hessians)
    original = sum(t.numel() * t.element_size() for t in state.values())
    print(f"{args.output}: {size} bytes, {original / size:.1f}x smaller than {args.input.name} ({original} bytes)")
    return 0


def compensated(args: argparse.Namespace, state: dict, architecture: dict | None, handler: dict | None) -> dict:
    """The second moments of every Linear and convolution weight's inputs over all of
    ``--calibrate``'s inputs: error compensation at the given qualities, no search (and no
    rows by use, which would lower the fidelity a quality gives)."""
    import sys

    from jpegweights.handlers.calibrate import Calibration, read_inputs

    measure = Calibration({"architecture": architecture, "handler": handler}, state, read_inputs(args.calibrate), None, trust_code=args.trust_code, compensate=True)
    hessians = measure.hessians(lookups=False)  # a row's step by its use only where a search measures what it costs
    print(f"error compensation fitted on the {measure.samples} inputs from {args.calibrate}, for those of the {described(hessians)}", file=sys.stderr, flush=True)
    return hessians


def described(hessians: dict) -> str:
    """What ``Calibration.hessians`` gave, in words: matrices, then lookup tables."""
    tables = sum(1 for h in hessians.values() if h.dim() == 1)
    words = f"{len(hessians) - tables} Linear and convolution weights coded as JPEG in the matrix layout"
    return words + (f"; the rows of {tables} token embedding(s) coded by how often each is used (--no-rows-by-use: not)" if tables else "")


def calibrated(args: argparse.Namespace, state: dict, config: EncodeConfig, architecture: dict | None, handler: dict | None) -> tuple[EncodeConfig, dict | None]:
    """``config`` with per-tensor qualities that meet ``--max-kl``/``--min-cosine`` on the
    calibration data (progress on stderr), and the inputs' second moments for error
    compensation (None with ``--no-compensate``)."""
    import sys
    import time

    from jpegweights.codec.allocate import allocate
    from jpegweights.handlers.calibrate import Calibration, read_inputs

    if args.max_kl is not None:
        metric, limit, shown = "kl", args.max_kl, lambda d: f"KL {d:.5f}"
        if not 0 < limit < math.inf:
            raise ValueError(f"--max-kl must be positive, got {limit}")
    else:
        metric, limit, shown = "cosine", 1 - args.min_cosine, lambda d: f"cosine {1 - d:.5f}"
        if not -1 <= args.min_cosine < 1:
            raise ValueError(f"--min-cosine must be in -1..1 (exclusive of 1), got {args.min_cosine}")
    qualities = _ints(args.qualities)
    t0 = time.perf_counter()
    measure = Calibration({"architecture": architecture, "handler": handler}, state, read_inputs(args.calibrate), metric, trust_code=args.trust_code, compensate=args.compensate)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    log(f"calibrating on {measure.samples} inputs from {args.calibrate} ({metric})")
    hessians = measure.hessians(lookups=args.rows_by_use) if args.compensate else None
    if hessians is not None:
        log(f"error compensation fitted on the first {measure.samples // 2} inputs and measured on the other {measure.samples - measure.samples // 2}, for those of the {described(hessians)}")
    cache_file = (args.cache_dir or default_cache_dir()) / "calibration" / f"{calibration_key(state, architecture, handler, config, metric, args.calibrate, [args.compensate, args.rows_by_use])}.json"
    cache = read_cache(cache_file)
    if cache:
        log(f"reusing {len(cache)} measured points from {cache_file}")
    found = allocate(state, config, measure, limit, qualities, log=log, cache=cache, save=lambda c: write_cache(cache_file, c, log), hessians=hessians)
    log(f"chosen in {time.perf_counter() - t0:.0f} s ({found.evaluations} forward passes over the calibration inputs): {shown(found.distortion)} on them")
    if hessians is not None:
        log(f"coding with error compensation fitted on all {measure.samples} inputs")
        hessians = measure.hessians(every_input=True, lookups=args.rows_by_use)
    return found.config, hessians


def fidelity(args: argparse.Namespace) -> int:
    """A report as ``evaluate`` writes one (rows of method, setting, bytes and the metric) of the
    packages at ``--qualities``, measured against the float model on ``--data``."""
    from jpegweights.codec import decode, load_manifest
    from jpegweights.codec import encode as encode_package
    from jpegweights.handlers.calibrate import Calibration, read_inputs

    state, architecture, handler = load_state_dict(args.input)
    if architecture is None:
        raise CalibrationError(f"{args.input} names no architecture in its metadata: make it with 'jpegweights import --store'")
    measure = Calibration({"architecture": architecture, "handler": handler}, state, read_inputs(args.data), args.metric, trust_code=args.trust_code)
    value = (lambda d: d) if args.metric == "kl" else (lambda d: 1 - d)
    # other qualities coded as the server codes them: with the served package's settings
    served = load_manifest(args.package.read_bytes()) if args.package is not None else {}
    config = EncodeConfig.from_dict(served.get("config", {}))
    packages = {q: encode_package(state, config.at_quality(q), architecture, handler) for q in _ints(args.qualities)}
    if args.package is not None:
        packages[config.quality] = args.package.read_bytes()
    rows = [{"method": "float32", "setting": "-", "bytes": sum(t.numel() * 4 for t in state.values()), args.metric: value(0.0)}]
    for q, data in sorted(packages.items()):
        rows.append({"method": "jpegweights", "setting": f"q{q}", "bytes": len(data), args.metric: value(measure(decode(data)))})
        print(f"q{q}: {len(data)} bytes, {args.metric} {rows[-1][args.metric]:.5f}")
    report = {"title": f"{args.input.parent.name or args.input.name}: {args.metric} against the float model on {measure.samples} inputs from {args.data.name}", "rows": rows}
    write_atomic(args.out, json.dumps(report, indent=1).encode())
    return 0


def default_cache_dir() -> Path:
    import os

    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jpegweights"


CURVES = 2  # what a cached curve point means: 2 since token embeddings' rows are coded by use


def calibration_key(state: dict, architecture: dict, handler: dict | None, config: EncodeConfig, metric: str, data: Path, flags: list[bool]) -> str:
    """SHA-256 of everything a curve point depends on: the tensors, the model, the handler, the
    encode settings but the qualities and the container, the metric, the calibration inputs,
    the flags that change a coding (``--compensate``, ``--rows-by-use``), and the revision of
    the codings (``CURVES``)."""
    import hashlib

    from jpegweights.codec.allocate import digest

    h = hashlib.sha256()
    settings = {k: v for k, v in config.to_dict().items() if k not in ("quality", "quality_for", "compact")}  # the container moves no output
    h.update(json.dumps([architecture, handler, settings, metric, digest(state), flags, CURVES], sort_keys=True).encode())
    files = sorted(data.iterdir()) if data.is_dir() else [data]
    for f in files:
        if f.is_file():
            h.update(f"\0{f.name}\0".encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def read_cache(path: Path) -> dict:
    """A calibration cache file's points, or none if it is missing or not what we write."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def write_atomic(path: Path, data: bytes) -> None:
    """``data`` into ``path`` by a rename: readers see the old file or the whole new one."""
    import os

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_cache(path: Path, cache: dict, log) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(cache).encode())
    except OSError as exc:
        log(f"note: cannot keep measured points in {path}: {exc.strerror or exc}")


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
        print(f"{r['name']:<32} {str(r['shape']):<18} {r['dtype']:<5} {r['coding']:<6} {q:>3} {r['qtable'] or '-':<8} {r['bytes']:>10} {ratio:>7}")
    print(
        f"total: {summary['file_bytes']} bytes; {summary['ratio_vs_original']:.1f}x smaller than the original dtypes "
        f"({summary['original_bytes']} bytes), {summary['ratio_vs_float32']:.1f}x smaller than float32"
    )
    return 0
