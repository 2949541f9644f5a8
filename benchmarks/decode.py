"""Decode throughput: MB/s of float32 produced, against safetensors.torch.load_file.

    python benchmarks/decode.py [--repeat 7] [--against REV]

Cases: a smooth 4096x4096 float32 matrix at quality 50, the bundled MNIST MLP's package
(``models/mnist-mlp/model.jpw``, quality 20), and the served MobileNetV2, MiniLM and (opt-in) MPNet packages
when `make pretrained` has written them (``models/*/model.jpw`` against the float32
``model.safetensors`` beside them). Each is decoded --repeat times; medians are
printed, with what hashing the package (its SHA-256 digest) alone takes, as a share of the
decode (from 1 MiB the decoder hashes beside parsing and decoding). On a machine with CUDA the
same cases are also decoded on the GPU (nvJPEG).

``--against REV`` also decodes each case with the codec of git revision REV (``git archive``
into a temporary directory, imported under another name), alternating with this tree's, and
prints both medians and their ratio: speed work measured against its reference in one run.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from jpegweights.codec import EncodeConfig, decode, encode, snr_db

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"


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


def codec_at(rev: str, tmp: Path):
    """The ``codec`` package of git revision ``rev``, imported as ``codec_at_rev``."""
    root = tmp / "rev"
    root.mkdir()
    # the codec's folder at that revision: src/jpegweights/codec since the src layout, codec before
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-tree", "--name-only", rev, "src/jpegweights/codec"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    folder = "src/jpegweights/codec" if listed.strip() else "codec"
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, folder], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    spec = importlib.util.spec_from_file_location(
        "codec_at_rev", root / folder / "__init__.py", submodule_search_locations=[str(root / folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["codec_at_rev"] = module
    spec.loader.exec_module(module)
    return module


def against(label: str, state: dict[str, torch.Tensor], data: bytes, repeat: int, old) -> None:
    """This tree's decode and ``old.decode``, alternated; their outputs must be identical."""
    mine, theirs = decode(data), old.decode(data)
    assert all(torch.equal(mine[k], theirs[k]) for k in mine), f"{label}: the decoders disagree"
    mb = sum(t.numel() * 4 for t in state.values()) / 1e6
    times: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(repeat):
        for key, fn in (("old", old.decode), ("new", decode)):
            t0 = time.perf_counter()
            fn(data)
            times[key].append(time.perf_counter() - t0)
    t_old, t_new = statistics.median(times["old"]), statistics.median(times["new"])
    print(
        f"| {label} | {t_old * 1e3:.2f} ({mb / t_old:,.0f} MB/s) | {t_new * 1e3:.2f} ({mb / t_new:,.0f} MB/s) | "
        f"{t_new / t_old:.2f} |"
    )


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
    print(
        f"| {label} | cpu | {len(data):,} | {f32_bytes / len(data):.1f}x | {snr:.1f} | {jpw_cpu * 1e3:.2f} | "
        f"{mb / jpw_cpu:,.0f} | {check / jpw_cpu:.1%} | {st_cpu * 1e3:.2f} | {mb / st_cpu:,.0f} |"
    )
    if torch.cuda.is_available():

        def gpu_jpw():
            decode(data, "cuda")
            torch.cuda.synchronize()

        def gpu_st():
            [t.sum() for t in load_file(str(ref), device="cuda").values()]
            torch.cuda.synchronize()

        jpw_gpu, st_gpu = median_seconds(gpu_jpw, repeat), median_seconds(gpu_st, repeat)
        print(
            f"| {label} | cuda | {len(data):,} | {f32_bytes / len(data):.1f}x | {snr:.1f} | {jpw_gpu * 1e3:.2f} | "
            f"{mb / jpw_gpu:,.0f} | - | {st_gpu * 1e3:.2f} | {mb / st_gpu:,.0f} |"
        )


def cases(skip_mnist: bool):
    """(label, float state, package bytes) for each case that this checkout has."""
    smooth = {"w": smooth_matrix()}
    yield "smooth 4096x4096 q50", smooth, encode(smooth, EncodeConfig(quality=50))
    if not skip_mnist:
        from jpegweights.pipeline import load_model

        state, _ = load_model(MODELS / "mnist-mlp" / "model.safetensors")
        yield "bundled MNIST MLP, model.jpw (q20)", state, (MODELS / "mnist-mlp" / "model.jpw").read_bytes()
    for name in ("mobilenet_v2", "all-minilm-l6-v2", "all-mpnet-base-v2"):
        if (MODELS / name / "model.jpw").is_file():
            state = {
                k: v.float()
                for k, v in load_file(str(MODELS / name / "model.safetensors")).items()
                if v.is_floating_point()
            }
            yield f"served {name}, model.jpw (q90)", state, (MODELS / name / "model.jpw").read_bytes()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--skip-mnist", action="store_true")
    p.add_argument(
        "--against", metavar="REV", help="also time the codec of this git revision, alternating with this tree's"
    )
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cuda: {torch.cuda.is_available()}")
    print(
        "| case | device | .jpw bytes | ratio vs f32 | min SNR dB | jpw decode ms | jpw MB/s | SHA-256 alone | "
        "safetensors ms | safetensors MB/s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        found = list(cases(args.skip_mnist))
        for label, state, data in found:
            bench(label, state, data, args.repeat, Path(tmp))
        if args.against:
            old = codec_at(args.against, Path(tmp))
            print(f"\nCPU decode, alternating runs, medians of {args.repeat}:\n")
            print(f"| case | {args.against} ms | this tree ms | ratio |")
            print("|---|---:|---:|---:|")
            for label, state, data in found:
                against(label, state, data, args.repeat, old)


if __name__ == "__main__":
    main()
