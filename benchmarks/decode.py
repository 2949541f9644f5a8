"""Decode throughput: MB/s of float32 produced, against safetensors.torch.load_file.

    python benchmarks/decode.py [--repeat 7]

Cases: a smooth 4096x4096 float32 matrix at quality 50, the bundled MNIST MLP's package
(``models/mnist-mlp/model.jpw``, quality 20), and the served MobileNetV2 and MiniLM packages
when `make pretrained` has written them (``models/*/model.jpw`` against the float32
``model.safetensors`` beside them). Each is decoded --repeat times; medians are
printed, with the part of decoding spent checking the SHA-256 digest. On a machine with CUDA
the same cases are also decoded on the GPU (nvJPEG).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from jpegweights.codec import EncodeConfig, decode, encode, snr_db

MODELS = Path(__file__).resolve().parents[1] / "models"


def smooth_matrix(n: int = 4096, seed: int = 0) -> torch.Tensor:
    """Low-frequency structure plus a little noise: what JPEG is built for."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 1, n // 64, n // 64, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(n, n), mode="bicubic", align_corners=False)[0, 0]
    return (smooth * 0.02 + 0.001 * torch.randn(n, n, generator=g)).contiguous()


def median_seconds(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(label: str, state: dict[str, torch.Tensor], data: bytes, repeat: int, tmp: Path) -> None:
    f32_bytes = sum(t.numel() * 4 for t in state.values())
    ref = tmp / f"{label}.safetensors"
    save_file(state, str(ref))
    snr = min(snr_db(state[k], v) for k, v in decode(data).items() if v.dim() > 1)
    jpw_cpu = median_seconds(lambda: decode(data, "cpu"), repeat)
    check = median_seconds(lambda: hashlib.sha256(data).digest(), repeat)  # what the digest check costs
    # load_file maps the file lazily; touching every tensor makes it produce the floats too
    st_cpu = median_seconds(lambda: [t.sum() for t in load_file(str(ref)).values()], repeat)
    mb = f32_bytes / 1e6
    print(f"| {label} | cpu | {len(data):,} | {f32_bytes / len(data):.1f}x | {snr:.1f} | {jpw_cpu * 1e3:.2f} | {mb / jpw_cpu:,.0f} | {check / jpw_cpu:.1%} | {st_cpu * 1e3:.2f} | {mb / st_cpu:,.0f} |")
    if torch.cuda.is_available():
        def gpu_jpw():
            decode(data, "cuda")
            torch.cuda.synchronize()

        def gpu_st():
            [t.sum() for t in load_file(str(ref), device="cuda").values()]
            torch.cuda.synchronize()

        jpw_gpu, st_gpu = median_seconds(gpu_jpw, repeat), median_seconds(gpu_st, repeat)
        print(f"| {label} | cuda | {len(data):,} | {f32_bytes / len(data):.1f}x | {snr:.1f} | {jpw_gpu * 1e3:.2f} | {mb / jpw_gpu:,.0f} | - | {st_gpu * 1e3:.2f} | {mb / st_gpu:,.0f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--skip-mnist", action="store_true")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cuda: {torch.cuda.is_available()}")
    print("| case | device | .jpw bytes | ratio vs f32 | min SNR dB | jpw decode ms | jpw MB/s | of which digest | safetensors ms | safetensors MB/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        smooth = {"w": smooth_matrix()}
        bench("smooth 4096x4096 q50", smooth, encode(smooth, EncodeConfig(quality=50)), args.repeat, Path(tmp))
        if not args.skip_mnist:
            from jpegweights.cli.training_cmds import load_model

            state, _ = load_model(MODELS / "mnist-mlp" / "model.safetensors")
            bench("bundled MNIST MLP, model.jpw (q20)", state, (MODELS / "mnist-mlp" / "model.jpw").read_bytes(), args.repeat, Path(tmp))
        for name in ("mobilenet_v2", "all-minilm-l6-v2"):
            if (MODELS / name / "model.jpw").is_file():
                state = {k: v.float() for k, v in load_file(str(MODELS / name / "model.safetensors")).items() if v.is_floating_point()}
                bench(f"served {name}, model.jpw (q90)", state, (MODELS / name / "model.jpw").read_bytes(), args.repeat, Path(tmp))


if __name__ == "__main__":
    main()
