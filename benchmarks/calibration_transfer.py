"""Does a calibrated search's target hold on text of another kind? A text model searched for
``--target`` mean cosine on one kind of text (the first 400 lines of Pillow's licence, as a
user might calibrate on whatever is at hand; ``--lines``), then measured on ordinary sentences it never saw
(benchmarks/data/sentences.txt and pretrained_fidelity.py's, 60 in all): with the bundled kinds
of text as a floor (the default) and without.

    python benchmarks/calibration_transfer.py [--models all-minilm-l6-v2] [--target 0.996] [--lines 400] [--out FILE]

Each search runs at the served settings (``EncodeConfig()``) with its own curve cache, so that
every run measures; the served package's cosine on the same sentences is the reference.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from pretrained_fidelity import SENTENCES  # noqa: E402

from jpegweights.codec import EncodeConfig, decode  # noqa: E402
from jpegweights.handlers import Request  # noqa: E402
from jpegweights.pipeline import compress  # noqa: E402
from jpegweights.pipeline.calibrate import Calibration  # noqa: E402
from jpegweights.pipeline.models import load_state_dict  # noqa: E402


def licence_lines(n: int = 400) -> list[str]:
    """The first ``n`` non-empty lines of the installed Pillow's licence file."""
    dist = importlib.metadata.distribution("pillow")
    path = next(f for f in dist.files if f.name.upper().startswith("LICENSE"))
    lines = [line.strip() for line in Path(dist.locate_file(path)).read_text().splitlines() if line.strip()]
    return lines[:n]


def held_out() -> list[str]:
    ordinary = [line for line in (ROOT / "benchmarks" / "data" / "sentences.txt").read_text().splitlines() if line]
    return ordinary + SENTENCES


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["all-minilm-l6-v2"])
    p.add_argument("--target", type=float, default=0.996)
    p.add_argument("--lines", type=int, default=400, help="lines of the licence to calibrate on")
    p.add_argument("--out", type=Path, help="also write the table as JSON")
    args = p.parse_args()
    torch.manual_seed(0)
    rows = []
    print(f"searched for mean cosine {args.target} on {len(licence_lines(args.lines))} lines of Pillow's licence; "
          f"measured on {len(held_out())} ordinary sentences it never saw")  # fmt: skip
    print("| model | calibration | package bytes | cosine on the licence | held-out cosine | search min |")
    print("|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        licence = Path(tmp) / "licence.txt"
        licence.write_text("\n".join(licence_lines(args.lines)))
        for model in args.models:
            source = ROOT / "models" / model / "model.safetensors"
            state, architecture, handler = load_state_dict(source)
            manifest = {"architecture": architecture, "handler": handler}
            served = decode((ROOT / "models" / model / "model.jpw").read_bytes())
            reference = Calibration(manifest, state, Request(text=held_out()), "cosine")
            rows.append(
                {
                    "model": model,
                    "calibration": "none: the served package (q90)",
                    "bytes": (ROOT / "models" / model / "model.jpw").stat().st_size,
                    "calibrated_cosine": None,
                    "held_out_cosine": 1 - reference(served),
                    "minutes": None,
                }  # fmt: skip
            )
            for floor in (False, True):
                t0 = time.perf_counter()
                result = compress(
                    source, EncodeConfig(), data=licence, target=args.target, metric="cosine", floor=floor,
                    held_out=Request(text=held_out()), cache_dir=Path(tmp) / f"cache-{model}-{floor}",
                    progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True),
                )  # fmt: skip
                rows.append(
                    {
                        "model": model,
                        "calibration": "the licence + the bundled kinds" if floor else "the licence",
                        "bytes": len(result.data),
                        "calibrated_cosine": result.as_fidelity(result.kinds["licence"]),
                        "held_out_cosine": result.as_fidelity(result.held_out),
                        "minutes": (time.perf_counter() - t0) / 60,
                        "kinds": {k: result.as_fidelity(v) for k, v in result.kinds.items()},
                    }  # fmt: skip
                )
            for r in rows[-3:]:
                shown = [f"{r[k]:.5f}" if r[k] is not None else "–" for k in ("calibrated_cosine", "held_out_cosine")]
                minutes = f"{r['minutes']:.1f}" if r["minutes"] is not None else "–"
                print(f"| {model} | {r['calibration']} | {r['bytes']:,} | {shown[0]} | {shown[1]} | {minutes} |",
                      flush=True)  # fmt: skip
    if args.out:
        report = {"target": args.target, "lines": args.lines, "held_out": len(held_out()), "rows": rows}
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
