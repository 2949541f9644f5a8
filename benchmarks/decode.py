"""Decode throughput: MB/s of float32 produced, against safetensors.torch.load_file.

    python benchmarks/decode.py [--data-dir ../shared/data/mnist] [--repeat 7]

Cases: a smooth 4096x4096 float32 matrix at quality 50, and the seed MNIST MLP (trained
briefly) at quality 20. Each is decoded --repeat times; medians are printed. On a machine with
CUDA the same cases are also decoded on the GPU (nvJPEG).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from codec import EncodeConfig, decode, encode, snr_db


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


def bench(label: str, state: dict[str, torch.Tensor], config: EncodeConfig, repeat: int, tmp: Path) -> None:
    f32_bytes = sum(t.numel() * 4 for t in state.values())
    data = encode(state, config)
    ref = tmp / f"{label}.safetensors"
    save_file(state, str(ref))
    snr = min(snr_db(state[k], v) for k, v in decode(data).items() if v.dim() > 1)
    jpw_cpu = median_seconds(lambda: decode(data, "cpu"), repeat)
    # load_file maps the file lazily; touching every tensor makes it produce the floats too
    st_cpu = median_seconds(lambda: [t.sum() for t in load_file(str(ref)).values()], repeat)
    mb = f32_bytes / 1e6
    print(f"| {label} | cpu | {len(data):,} | {f32_bytes / len(data):.1f}x | {snr:.1f} | {jpw_cpu * 1e3:.1f} | {mb / jpw_cpu:,.0f} | {st_cpu * 1e3:.1f} | {mb / st_cpu:,.0f} |")
    if torch.cuda.is_available():
        def gpu_jpw():
            decode(data, "cuda")
            torch.cuda.synchronize()

        def gpu_st():
            [t.sum() for t in load_file(str(ref), device="cuda").values()]
            torch.cuda.synchronize()

        jpw_gpu, st_gpu = median_seconds(gpu_jpw, repeat), median_seconds(gpu_st, repeat)
        print(f"| {label} | cuda | {len(data):,} | {f32_bytes / len(data):.1f}x | {snr:.1f} | {jpw_gpu * 1e3:.1f} | {mb / jpw_gpu:,.0f} | {st_gpu * 1e3:.1f} | {mb / st_gpu:,.0f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data/mnist")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--skip-mnist", action="store_true")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cuda: {torch.cuda.is_available()}")
    print("| case | device | .jpw bytes | ratio vs f32 | min SNR dB | jpw decode ms | jpw MB/s | safetensors ms | safetensors MB/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        bench("smooth 4096x4096 q50", {"w": smooth_matrix()}, EncodeConfig(quality=50), args.repeat, Path(tmp))
        if not args.skip_mnist:
            from training.mnist import load_mnist
            from training.train import train

            model, _ = train(load_mnist(args.data_dir, "train"), "mlp", epochs=1)
            bench("MNIST MLP q20", model.state_dict(), EncodeConfig(quality=20), args.repeat, Path(tmp))


if __name__ == "__main__":
    main()
