"""Rate–distortion of the codec's choices on the bundled MNIST MLP and CNN: the numbers behind
the defaults in docs/codec.md.

    python benchmarks/codec_choices.py --data-dir ../shared/data/mnist

Takes each bundled float model (``models/mnist-*/model.safetensors``; nothing is retrained),
prints the whole model under the default config at several qualities (the package as shipped,
architecture included), then codes each weight matrix under one alternative at a time (the
rest stay float32) and prints bytes, SNR and test accuracy. ``--defaults-only`` stops after the
first table; ``--json PATH`` also writes the first table's rows there (what docs/codec.md renders
with benchmarks/figures.py):

    python benchmarks/codec_choices.py --defaults-only --json docs/results/codec_choices.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jpegweights.pipeline import load_model
from jpegweights.codec import EncodeConfig, decode, encode
from jpegweights.handlers import build
from jpegweights.codec import codings
from jpegweights.codec.policy import measure
from jpegweights.training.mnist import load_mnist
from jpegweights.training.train import accuracy

MODELS = Path(__file__).resolve().parents[1] / "models"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", default="../shared/data/mnist")
    p.add_argument("--defaults-only", action="store_true")
    p.add_argument("--json", type=Path, help="write the whole-model rows (quality, bytes, accuracy) to this JSON file")
    args = p.parse_args()
    test_set = load_mnist(args.data_dir, "test")
    whole = []  # the first table's rows, for --json
    for arch in ("mlp", "cnn"):
        state, spec = load_model(MODELS / f"mnist-{arch}" / "model.safetensors")
        model = build(spec, {k: v.clone() for k, v in state.items()}).eval()
        base = accuracy(model, spec, test_set)
        print(f"\n## {arch}: float32 test accuracy {base * 100:.2f}%, whole model, default config")
        f32 = sum(t.numel() * 4 for t in state.values())
        print("| quality | bytes | ratio vs f32 | accuracy | change |\n|---:|---:|---:|---:|---:|")
        for q in (5, 10, 15, 20, 30, 50, 75, 90):
            data = encode(state, EncodeConfig(quality=q), architecture=spec)
            model.load_state_dict(decode(data))
            acc = accuracy(model, spec, test_set)
            print(f"| {q} | {len(data)} | {f32 / len(data):.1f} | {acc * 100:.2f} | {(acc - base) * 100:+.2f} |")
            change = (acc - base) * 100
            row = {"model": f"mnist-{arch}", "quality": q, "bytes": len(data), "ratio": f32 / len(data)}
            whole.append({**row, "accuracy": acc, "change_points": change})
        model.load_state_dict(state)
        if args.defaults_only:
            continue
        print(f"\n## {arch}: one tensor at a time")
        print("| tensor | coding | bytes | ratio vs f32 | SNR dB | accuracy | change |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for name, t in state.items():
            if t.dim() < 2:
                continue
            variants = {"int8 per-row": lambda: codings.int8.encode(name, t, EncodeConfig().for_tensor(name))}
            for q in (10, 20, 50):
                for table in ("standard", "flat"):
                    for label, kw in {
                        "row ranges": dict(ranges="row"),
                        "row ranges, matrix layout": dict(ranges="row", layout="matrix"),
                        "row ranges, clip 3σ": dict(ranges="row", clip_sigma=3.0),
                        "row ranges, clip 4σ": dict(ranges="row", clip_sigma=4.0),
                        "tensor range": dict(ranges="tensor"),
                        "tensor range, matrix layout": dict(ranges="tensor", layout="matrix"),
                    }.items():
                        variants[f"jpeg q{q} {table}, {label}"] = lambda q=q, table=table, kw=kw: codings.jpeg.encode(
                            name, t, EncodeConfig(quality=q, qtable=table, **kw).for_tensor(name)
                        )
            seen = set()
            for label, make in variants.items():
                coded = make()
                key = (coded.nbytes, round(measure(coded, t), 4))
                if "matrix" in label and key in seen:  # auto already chose the matrix layout
                    continue
                seen.add(key)
                model.load_state_dict({**state, name: coded.decode()})
                acc = accuracy(model, spec, test_set)
                f32 = t.numel() * 4
                print(
                    f"| {name} | {label} | {coded.nbytes} | {f32 / coded.nbytes:.1f} | {key[1]:.1f} | {acc * 100:.2f} "
                    f"| {(acc - base) * 100:+.2f} |"
                )
            model.load_state_dict(state)
    if args.json:
        result = {"command": "benchmarks/codec_choices.py --defaults-only", "rows": whole}
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
