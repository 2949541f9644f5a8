"""``compress``, ``decompress`` and ``inspect``: the codec from the command line."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from jpegweights.codec import CodecError, EncodeConfig, save_file
from jpegweights.codec.container import DTYPES, read
from jpegweights.codec.manifest import check_manifest, stored_keys

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (CodecError, OSError, ValueError)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="state_dict (.safetensors or .pt) -> .jpw package")
    p.add_argument("input", type=Path, help=".safetensors, or a .pt/.pth state_dict (loaded with weights_only=True)")
    p.add_argument("output", type=Path)
    p.add_argument("--quality", "-q", type=int, default=EncodeConfig.quality, help="JPEG quality 1..100 (default %(default)s)")
    p.add_argument("--quality-for", action="append", default=[], metavar="NAME=Q", help="per-tensor quality, NAME may be a glob")
    p.add_argument("--coding-for", action="append", default=[], metavar="NAME=CODING", help="auto, jpeg, int8 or raw per tensor")
    p.add_argument("--architecture", type=Path, help="JSON architecture spec to embed (default: the one in the input's metadata)")
    p.set_defaults(func=compress)

    p = sub.add_parser("decompress", help=".jpw package -> float .safetensors")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p.set_defaults(func=decompress)

    p = sub.add_parser("inspect", help="per-tensor shape, dtype, coding, quality and bytes of a .jpw")
    p.add_argument("input", type=Path)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=inspect)


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


def load_state_dict(path: Path) -> tuple[dict, dict | None]:
    """(state_dict, architecture from the safetensors metadata, if any)."""
    from jpegweights.handlers.importers import read_state

    state, metadata = read_state(path)
    return state, json.loads(metadata["architecture"]) if "architecture" in metadata else None


def compress(args: argparse.Namespace) -> int:
    config = EncodeConfig(
        quality=args.quality,
        quality_for=_pairs(args.quality_for, int),
        coding_for=_pairs(args.coding_for, str),
    )
    state, architecture = load_state_dict(args.input)
    if args.architecture:
        architecture = json.loads(args.architecture.read_text())
    size = save_file(state, args.output, config, architecture)
    original = sum(t.numel() * t.element_size() for t in state.values())
    print(f"{args.output}: {size} bytes, {original / size:.1f}x smaller than {args.input.name} ({original} bytes)")
    return 0


def decompress(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file as save_safetensors

    from jpegweights.codec import load_file

    state = load_file(args.input)
    save_safetensors({k: v.contiguous() for k, v in state.items()}, str(args.output))
    print(f"{args.output}: {len(state)} tensors")
    return 0


def summarize(data: bytes) -> dict[str, Any]:
    """Per-tensor and total figures of a package, from its manifest and stored sizes."""
    stored, manifest = read(data)
    check_manifest(manifest, stored)
    rows, total_original, total_f32 = [], 0, 0
    for name, entry in manifest["tensors"].items():
        nbytes = sum(stored[key].numel() * stored[key].element_size() for key in stored_keys(entry))
        numel = math.prod(entry["shape"])
        original = numel * DTYPES[entry["dtype"]].itemsize
        total_original += original
        total_f32 += numel * 4
        rows.append({
            "name": name, "shape": entry["shape"], "dtype": entry["dtype"], "coding": entry["coding"],
            "quality": entry.get("quality"), "qtable": entry.get("qtable"), "layout": entry.get("layout"),
            "bytes": nbytes, "ratio": original / nbytes if nbytes else None,
        })  # fmt: skip
    return {
        "version": manifest["version"],
        "file_bytes": len(data),
        "original_bytes": total_original,
        "float32_bytes": total_f32,
        "ratio_vs_original": total_original / len(data),
        "ratio_vs_float32": total_f32 / len(data),
        "architecture": manifest.get("architecture") is not None,
        "tensors": rows,
    }


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
