"""The calibrated search's speed on a quiet CPU and beside a CPU-bound process, as shipped (a
forward pass per CPU, each on one thread: ``cpus.torch_threads(1)``) against one pass at a
time on every CPU (torch's default), measured in the same run.

    python benchmarks/search_speed.py [--model all-minilm-l6-v2] [--target 0.996] [--repeat 1] [--out F]

The search is compare.py's: ``compress`` with error compensation on benchmarks/data/sentences.txt
(text models) at the served settings (q90), no curves cached. Prints seconds per search, median
of ``--repeat``, and the share of its quiet speed each keeps beside a Python busy loop pinned to
the first CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from runtimes import Busy  # noqa: E402

from jpegweights import cpus  # noqa: E402
from jpegweights.codec import EncodeConfig, load_package  # noqa: E402
from jpegweights.pipeline import compress  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="all-minilm-l6-v2")
    p.add_argument("--target", type=float, default=0.996)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    folder = ROOT / "models" / args.model
    _, manifest = load_package(folder / "model.jpw")
    n = cpus.available()

    def search(rule: str) -> float:
        run = compress if rule == "shipped" else compress.__wrapped__  # without the one-thread rule
        torch.set_num_threads(n)
        with tempfile.TemporaryDirectory() as cache:
            t0 = time.perf_counter()
            run(
                folder / "model.safetensors",
                EncodeConfig(quality=90),
                data=ROOT / "benchmarks" / "data" / "sentences.txt",
                target=args.target,
                metric="cosine",
                cache_dir=cache,
                architecture=manifest["architecture"],
                handler=manifest["handler"],
            )
            return time.perf_counter() - t0

    rules = {"shipped": f"{n} passes x 1 thread", "torch default": f"1 pass x {n} threads"}
    print(f"{args.model}, --min-cosine {args.target}; seconds per search, median of {args.repeat}")
    print("| rule | quiet s | beside a busy process s | kept |")
    print("|---|---:|---:|---:|")
    rows = []
    for rule, layout in rules.items():
        quiet = statistics.median(search(rule) for _ in range(args.repeat))
        with Busy():
            shared = statistics.median(search(rule) for _ in range(args.repeat))
        rows.append({"rule": rule, "layout": layout, "quiet_s": round(quiet, 1), "shared_s": round(shared, 1)})
        print(f"| {rule}: {layout} | {quiet:.1f} | {shared:.1f} | {quiet / shared:.0%} |", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "target": args.target, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
