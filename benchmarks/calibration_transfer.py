"""Does a calibrated search's target hold on inputs of another kind? A model searched on one
kind of input, as a user might calibrate on whatever is at hand, then measured on inputs of
another kind that it never saw: with the bundled kinds as a floor (the default) and without.

- Text models: searched for ``--target`` mean cosine on the first ``--lines`` lines of Pillow's
  licence, measured on ordinary sentences (benchmarks/data/sentences.txt and
  pretrained_fidelity.py's, 60 in all).
- mobilenet_v2: searched for ``--kl-target`` mean KL on the views of the texture and sky photos
  of tests/data/photos (brick, gravel, hubble_deep_field), measured on the views of its object
  photos (chelsea, coins, motorcycle_left, rocket). None of these is among the bundled photos.

    python benchmarks/calibration_transfer.py [--models all-minilm-l6-v2] [--target 0.996] [--lines 400] [--out FILE]
    python benchmarks/calibration_transfer.py --models mobilenet_v2 [--kl-target 0.015] [--out FILE]

Each search runs at the served settings (``EncodeConfig()``) with its own curve cache, so that
every run measures; the served package's fidelity on the same held-out inputs is the reference.
A run covers text models or image models, not both (one table each).
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

from pretrained_fidelity import SENTENCES, views  # noqa: E402

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


PHOTOS = ROOT / "tests" / "data" / "photos"
TEXTURES = ("brick", "gravel", "hubble_deep_field")  # calibrated on
OBJECTS = ("chelsea", "coins", "motorcycle_left", "rocket")  # measured on


def photo_views(names: tuple[str, ...]) -> list[bytes]:
    return [v for name in names for v in views(PHOTOS / f"{name}.jpg")]


def setup(kind: str, args: argparse.Namespace, tmp: Path) -> dict:
    """What a run of ``kind`` (text or images) searches on, for what, and measures on."""
    if kind == "text":
        data = tmp / "licence.txt"
        data.write_text("\n".join(licence_lines(args.lines)))
        return {
            "metric": "cosine", "target": args.target, "data": data, "kind": "the licence",
            "calibrated_on": f"the first {args.lines} lines of Pillow's licence", "held_out": Request(text=held_out()),
        }  # fmt: skip
    data = tmp / "textures"
    data.mkdir()
    for i, view in enumerate(photo_views(TEXTURES)):
        (data / f"{i:03d}.png").write_bytes(view)
    return {
        "metric": "kl", "target": args.kl_target, "data": data, "kind": "the textures",
        "calibrated_on": f"the views of {', '.join(TEXTURES)} (tests/data/photos)",
        "held_out": Request(images=photo_views(OBJECTS)),
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["all-minilm-l6-v2"])
    p.add_argument("--target", type=float, default=0.996, help="mean cosine, for text models")
    p.add_argument("--kl-target", type=float, default=0.015, help="mean KL, for image models")
    p.add_argument("--lines", type=int, default=400, help="lines of the licence to calibrate on")
    p.add_argument("--out", type=Path, help="also write the table as JSON")
    args = p.parse_args()
    kinds = {"images" if m == "mobilenet_v2" else "text" for m in args.models}
    if len(kinds) != 1:
        p.error("run text models and mobilenet_v2 apart: each run makes one table")
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        case = setup(kinds.pop(), args, Path(tmp))
        metric, data, kind = case["metric"], case["data"], case["kind"]
        held = case["held_out"]
        n_held = len(held.text or held.images)
        print(f"searched for mean {metric} {case['target']} on {case['calibrated_on']}; "
              f"measured on {n_held} inputs of another kind")  # fmt: skip
        print(f"| model | calibration | package bytes | {metric} on {kind} | held-out {metric} | search min |")
        print("|---|---|---:|---:|---:|---:|")
        for model in args.models:
            source = ROOT / "models" / model / "model.safetensors"
            state, architecture, handler = load_state_dict(source)
            manifest = {"architecture": architecture, "handler": handler}
            served = decode((ROOT / "models" / model / "model.jpw").read_bytes())
            reference = Calibration(manifest, state, held, metric)(served)
            rows.append(
                {
                    "model": model,
                    "calibration": "none: the served package (q90)",
                    "bytes": (ROOT / "models" / model / "model.jpw").stat().st_size,
                    "calibrated": None,
                    "held_out": reference if metric == "kl" else 1 - reference,
                    "minutes": None,
                }  # fmt: skip
            )
            for floor in (False, True):
                t0 = time.perf_counter()
                result = compress(
                    source, EncodeConfig(), data=data, target=case["target"], metric=metric, floor=floor,
                    held_out=held, cache_dir=Path(tmp) / f"cache-{model}-{floor}",
                    progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True),
                )  # fmt: skip
                rows.append(
                    {
                        "model": model,
                        "calibration": f"{kind} + the bundled kinds" if floor else kind,
                        "bytes": len(result.data),
                        "calibrated": result.as_fidelity(result.kinds[data.stem]),
                        "held_out": result.as_fidelity(result.held_out),
                        "minutes": (time.perf_counter() - t0) / 60,
                        "kinds": {k: result.as_fidelity(v) for k, v in result.kinds.items()},
                    }  # fmt: skip
                )
            for r in rows[-3:]:
                shown = [f"{r[k]:.5f}" if r[k] is not None else "–" for k in ("calibrated", "held_out")]
                minutes = f"{r['minutes']:.1f}" if r["minutes"] is not None else "–"
                print(f"| {model} | {r['calibration']} | {r['bytes']:,} | {shown[0]} | {shown[1]} | {minutes} |",
                      flush=True)  # fmt: skip
    if args.out:
        report = {
            "metric": metric, "target": case["target"], "calibrated_on": case["calibrated_on"], "kind": kind,
            "held_out": n_held, "rows": rows,
        }  # fmt: skip
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
