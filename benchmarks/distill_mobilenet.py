"""MobileNetV2 fine-tuned through its own coding by distillation on unlabelled photos, beside
the post-training packages at the same qualities.

    .venv/bin/python benchmarks/distill_mobilenet.py [--qualities 90,75] [--epochs 60] [--calibrated 0.03,0.06]

Needs `make pretrained`'s float source. The photos are the same as for benchmarks/compare.py.
- It trains on the 6 views (benchmarks/pretrained_fidelity.py) of the even-numbered photos in
  tests/data/photos, with no labels, two ways (``training.distill``). The loss is the KL
  divergence from the float model's outputs.
  - "held-out epoch": as ``jpegweights finetune --data`` does, it trains on 5 photos (30 views)
    and chooses the epoch on the other 2, stopping after 10 epochs without a better one;
  - "all 7 photos": it trains on all 42 views for every epoch and keeps the epoch with the lowest
    distortion on them.
- It measures on the views of the odd-numbered photos, which it never trained on: the mean KL
  of the output distribution against the float model, as compare.py does.
- The codings are pinned at import's settings (flat table, per-row ranges, float16 small
  tensors) at each quality. BatchNorm keeps the float model's statistics; its scale and shift
  train.
- The packages are whole files in the plain container, as ``import`` writes them, so they are
  comparable with the post-training rows.

About 2.5 minutes per quality on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import PRETRAINED  # noqa: E402
from pretrained_fidelity import views  # noqa: E402

from jpegweights.codec import EncodeConfig, decode, encode  # noqa: E402
from jpegweights.handlers import Request  # noqa: E402
from jpegweights.pipeline import Calibration, compress, load_state_dict  # noqa: E402
from jpegweights.training.distill import distill  # noqa: E402
from jpegweights.training.finetune import pin  # noqa: E402


def photos(files: list[Path]) -> Request:
    return Request(images=[v for f in files for v in views(f)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--qualities", default="90,75")
    p.add_argument(
        "--calibrated",
        default="",
        help=(
            "also distill the per-tensor qualities compress --calibrate chooses on the even photos "
            "for these --max-kl targets, e.g. 0.03"
        ),
    )
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--batch-size", type=int, default=15)
    args = p.parse_args()
    source = ROOT / "models" / "mobilenet_v2" / "model.safetensors"
    if not source.exists():
        sys.exit(f"{source} is missing: run `make pretrained` first")
    state, architecture, handler_spec = load_state_dict(source)
    manifest = {"architecture": architecture, "handler": handler_spec}
    files = sorted((ROOT / "tests" / "data" / "photos").glob("*.jpg"))
    even, odd = files[0::2], files[1::2]
    train, validation, held_out = photos(even[:-2]), photos(even[-2:]), Calibration(manifest, state, photos(odd), "kl")
    float32 = sum(t.numel() * 4 for t in state.values())
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    print(
        f"MobileNetV2: trained on {len(train.images)} views, epoch chosen on {len(validation.images)}, "
        f"KL measured on {held_out.samples} views of other photos"
    )
    print(f"{'package':<36} {'bytes':>11} {'x float32':>10} {'held-out KL':>12} {'seconds':>8}")
    settings = {**PRETRAINED, "compact": False}  # import's, in the plain container (as docs/finetune.md measured)
    configs = [(f"q{q}", EncodeConfig(**{**settings, "quality": int(q)})) for q in args.qualities.split(",") if q]
    if args.calibrated:
        for target in args.calibrated.split(","):  # as compress --calibrate --no-compensate chooses them
            found = compress(
                state,
                EncodeConfig(**settings),
                data=photos(even),
                target=float(target),
                metric="kl",
                compensate=False,
                architecture=architecture,
                handler=handler_spec,
                progress=log,
            )
            configs.append((f"--max-kl {target}", found.config))
    for q, raw in configs:
        config = pin(state, raw)
        data = encode(state, config)
        print(
            f"{f'post-training {q}':<36} {len(data):>11,} {float32 / len(data):>10.2f} {held_out(decode(data)):>12.4f}",
            flush=True,
        )
        runs = (
            ("distilled, held-out epoch", train, validation, 10),  # what finetune --data does
            (
                "distilled, all 7 photos",
                photos(even),
                photos(even),
                args.epochs,
            ),  # the epoch with the lowest training distortion
        )
        for label, on, chosen_on, patience in runs:
            t0 = time.perf_counter()
            result = distill(
                state,
                manifest,
                on,
                chosen_on,
                config,
                epochs=args.epochs,
                lr=args.lr,
                batch_size=args.batch_size,
                patience=patience,
                log=log,
            )
            data = encode(result.state, config)
            print(
                (
                    f"{f'{label} {q}':<36} {len(data):>11,} {float32 / len(data):>10.2f} "
                    f"{held_out(decode(data)):>12.4f} {time.perf_counter() - t0:>8.0f}"
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
