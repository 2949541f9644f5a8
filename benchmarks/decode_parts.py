"""Where CPU decoding spends its time, part by part: the figures behind docs/codec.md's
"Decode speed".

    python benchmarks/decode_parts.py [--repeat 15]

For each served package that `make pretrained` has written (MobileNetV2, MiniLM): the JPEG
streams alone on 2 threads (simplejpeg) and on one (simplejpeg, then torchvision's decoder,
which must give the same pixels); parsing with the digest, and checking every format rule;
the whole decode with tensors from 2 MiB in huge-page memory and without, alternating; the first
decode in a fresh process. Then two
microbenchmarks on one thread: dequantizing a 1024x1280 atlas by one ``addcmul`` from uint8
against ``copy_``/``mul_``/``add_``, and filling 91 MB of fresh memory (MiniLM's float32) from
uint8, in torch's own allocation, in anonymous memory advised for huge pages, and in memory
already mapped. Medians of --repeat.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from jpegweights.codec import core, decode, jpeg
from jpegweights.codec.container import read
from jpegweights.codec.manifest import check_manifest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import MODELS, median_seconds  # noqa: E402


def median_ms(fn, repeat: int) -> float:
    return median_seconds(fn, repeat) * 1e3


def package(name: str, data: bytes, repeat: int) -> None:
    from torchvision.io import ImageReadMode, decode_jpeg

    stored, manifest = read(data)
    streams = sorted((stored[a["key"]] for e in manifest["tensors"].values() if e["coding"] == "jpeg" for a in e["atlases"]), key=lambda s: -s.numel())
    assert all(torch.equal(jpeg.decode(s), decode_jpeg(s, mode=ImageReadMode.GRAY)[0]) for s in streams), "the decoders disagree"
    with ThreadPoolExecutor(2) as pool:
        two = median_ms(lambda: list(pool.map(jpeg.decode, streams)), repeat)
    one = median_ms(lambda: [jpeg.decode(s) for s in streams], repeat)
    tv = median_ms(lambda: [decode_jpeg(s, mode=ImageReadMode.GRAY) for s in streams], repeat)
    parse = median_ms(lambda: read(data), repeat)
    check = median_ms(lambda: check_manifest(manifest, stored), repeat)
    times: dict[bool, list[float]] = {True: [], False: []}
    default = core.HUGE_PAGE
    try:
        for _ in range(repeat):
            for huge in (False, True):
                core.HUGE_PAGE = default if huge else 1 << 62
                t0 = time.perf_counter()
                decode(data)
                times[huge].append(time.perf_counter() - t0)
    finally:
        core.HUGE_PAGE = default
    plain, huge = (statistics.median(times[k]) * 1e3 for k in (False, True))
    print(f"| {name} | {sum(s.numel() for s in streams) / 1e6:.2f} MB | {two:.1f} | {one:.1f} | {tv:.1f} | {parse:.1f} | {check:.1f} | {plain:.1f} | {huge:.1f} | {first_decode(name, repeat):.1f} |")


def first_decode(name: str, repeat: int) -> float:
    """The first decode of the package in a fresh process (its imports done and the pool's
    threads started on a small package first): no freed memory to reuse yet. Median of
    ``min(repeat, 5)`` processes."""
    code = (
        "import sys, time; from pathlib import Path; from jpegweights.codec import decode; "
        f"m = Path({str(MODELS)!r}); decode((m / 'mnist-mlp' / 'model.jpw').read_bytes()); data = (m / {name!r} / 'model.jpw').read_bytes(); "
        "t = time.perf_counter(); decode(data); print((time.perf_counter() - t) * 1e3)"
    )
    runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout) for _ in range(min(repeat, 5))]
    return statistics.median(runs)


def micro(repeat: int) -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 256, (1024, 1280), dtype=torch.uint8, generator=g)
    scale, offset, out = torch.rand(1024, 1, generator=g), torch.rand(1024, 1, generator=g), torch.empty(1024, 1280)
    fused = median_ms(lambda: torch.addcmul(offset, q, scale, out=out), repeat)
    three = median_ms(lambda: core.dequantize(q, scale, offset, out), repeat)
    print(f"\nDequantizing a 1024x1280 atlas, one thread: addcmul from uint8 {fused:.2f} ms, copy_/mul_/add_ {three:.2f} ms")
    n = 91_000_000 // 4
    values = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g)
    mapped = torch.empty(n)
    fresh = median_ms(lambda: torch.empty(n).copy_(values), repeat)
    huge = median_ms(lambda: core.empty_float32((n, 1), "cpu").view(-1).copy_(values), repeat)
    warm = median_ms(lambda: mapped.copy_(values), repeat)
    print(f"Filling 91 MB of float32 from uint8, one thread: torch.empty {fresh:.1f} ms, huge-page memory {huge:.1f} ms, memory already mapped {warm:.1f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=15)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; milliseconds, medians of {args.repeat}\n")
    print("| package | JPEG | JPEG, 2 threads | 1 thread | torchvision, 1 thread | parse + digest | check | decode, torch.empty | decode, huge pages | first decode in a process |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in ("mobilenet_v2", "all-minilm-l6-v2"):
        path = MODELS / name / "model.jpw"
        if path.is_file():
            package(name, path.read_bytes(), args.repeat)
    micro(args.repeat)


if __name__ == "__main__":
    main()
