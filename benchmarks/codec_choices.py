"""Rate–distortion of the codec's choices on the seed MLP (and the CNN): the numbers behind the
defaults in docs/codec.md.

    python benchmarks/codec_choices.py --data-dir ../shared/data/mnist

Trains each model briefly with a fixed seed, then codes each weight matrix under one
alternative at a time (the rest stay float32) and prints bytes, SNR and test accuracy.
"""

from __future__ import annotations

import argparse
from unittest import mock

import torch

from codec import tiles
from codec.core import encode_int8, encode_jpeg, measure, _decode_entry
from training.mnist import load_mnist
from training.train import accuracy, train


def quantize_per_tensor(x, clip_sigma=None, scale_dtype="auto"):
    """Alternative to per-row ranges: one range for the whole tensor."""
    aff = tiles._quantize_rows_orig(x.reshape(1, -1), clip_sigma, scale_dtype)
    rows = x.shape[0]
    return tiles.RowAffine(aff.q.view(x.shape), aff.scale.expand(rows).contiguous(), aff.offset.expand(rows).contiguous())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", default="../shared/data/mnist")
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    train_set, test_set = load_mnist(args.data_dir, "train"), load_mnist(args.data_dir, "test")
    tiles._quantize_rows_orig = tiles.quantize_rows
    for arch in ("mlp", "cnn"):
        model, spec = train(train_set, arch, epochs=args.epochs)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        base = accuracy(model, spec, test_set)
        print(f"\n## {arch}: float32 test accuracy {base * 100:.2f}%")
        print("| tensor | coding | bytes | ratio vs f32 | SNR dB | accuracy | change |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for name, t in state.items():
            if t.dim() < 2:
                continue
            variants = {"int8 per-row": lambda: encode_int8(name, t)}
            for q in (10, 20, 50):
                for table in ("standard", "flat"):
                    for layout in ("auto", "matrix"):
                        variants[f"jpeg q{q} {table} {layout}"] = lambda q=q, table=table, layout=layout: encode_jpeg(name, t, q, table, layout)
                    variants[f"jpeg q{q} {table} clip3"] = lambda q=q, table=table: encode_jpeg(name, t, q, table, "auto", 3.0)
                    variants[f"jpeg q{q} {table} clip4"] = lambda q=q, table=table: encode_jpeg(name, t, q, table, "auto", 4.0)
                    variants[f"jpeg q{q} {table} per-tensor range"] = lambda q=q, table=table: _per_tensor(name, t, q, table)
            seen = set()
            for label, make in variants.items():
                coded = make()
                key = (coded.nbytes, round(measure(coded, t), 4))
                if "matrix" in label and key in seen:  # auto already chose the matrix layout
                    continue
                seen.add(key)
                model.load_state_dict({**state, name: _decode_entry(name, coded.entry, coded.stored, "cpu")})
                acc = accuracy(model, spec, test_set)
                f32 = t.numel() * 4
                print(f"| {name} | {label} | {coded.nbytes} | {f32 / coded.nbytes:.1f} | {key[1]:.1f} | {acc * 100:.2f} | {(acc - base) * 100:+.2f} |")
            model.load_state_dict(state)


def _per_tensor(name, t, q, table):
    with mock.patch("codec.core.quantize_rows", quantize_per_tensor):
        return encode_jpeg(name, t, q, table, "auto")


if __name__ == "__main__":
    main()
