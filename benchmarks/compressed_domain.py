"""Compressed-domain inference against the decoded dense model, in one run.

    python benchmarks/compressed_domain.py [--repeat 15] [--no-rss]

For each case, the dense model (the package decoded by libjpeg, as the server runs it by
default) and the same model with its Linear and 1x1 conv layers computing from the JPEG
coefficients (``handlers.compress``), side by side:

- resident weight bytes (``handlers.resident_bytes``), and the process RSS after loading the
  model and running it once, each mode in a fresh process (skip with --no-rss);
- batch-1 latency and batch-64 throughput: medians over --repeat rounds, each round timing a
  block of passes (about 50 ms) of the dense model, then of the compressed one (MobileNetV2:
  batch 8 images for the throughput; 64 take minutes);
- the largest output difference, relative to the largest output: against the dense model
  rebuilt from the same coefficients by a float IDCT (``handlers.decompress``: what the
  compressed domain computes, exactly), and against libjpeg's decode (which rounds pixels to
  integers and clamps them to 0..255).

Then, for each model, what ``clamp_free`` encoding costs (bytes, encode time) and what it removes
(the pixels libjpeg clamps). Last, the MNIST MLP's test accuracy both ways (with MNIST in
--data-dir), the share of coefficients MiniLM's linear layers keep at lower qualities, and the
time to read them with jpeglib, against decoding the same streams with
libjpeg-turbo.

Cases: the bundled MNIST MLP at its package (``auto``: the layers where it pays); MobileNetV2's
1x1 convolutions and classifier and MiniLM's linear layers at the served packages (``all``:
under ``auto`` they stay dense, see the table's density); synthetic smooth 1024x1024 and
4096x4096 layers at quality 75. MobileNetV2 and MiniLM need ``make pretrained``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from jpegweights import handlers
from jpegweights.client.model import UNLIMITED as LIMITS
from jpegweights.codec import EncodeConfig, decode, encode, load_manifest
from jpegweights.compressed import load_matrices

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
sys.path.insert(0, str(ROOT / "benchmarks"))
from decode import median_seconds, smooth_matrix  # noqa: E402

PHOTO = ROOT / "tests" / "data" / "photos"
SENTENCE = "A quick brown fox jumps over the lazy dog near the river bank."
CASES = {"mnist-mlp": "auto", "mobilenet_v2": "all", "all-minilm-l6-v2": "all"}


def requests(name: str, n: int) -> handlers.Request:
    if name.startswith("mnist"):
        return handlers.Request(inputs=np.random.default_rng(0).integers(0, 256, (n, 1, 28, 28)).astype(np.float32))
    if name == "mobilenet_v2":
        photos = sorted(PHOTO.glob("*.jpg"))
        return handlers.Request(images=[photos[i % len(photos)].read_bytes() for i in range(n)])
    return handlers.Request(text=[f"{SENTENCE} ({i})" for i in range(n)])


def model_pair(name: str, policy: str):
    """(dense handler, compressed handler, compress report, reference module)."""
    data = (MODELS / name / "model.jpw").read_bytes()
    state, manifest = decode(data), load_manifest(data)
    dense, comp = handlers.load(manifest, state), handlers.load(manifest, state)
    report = handlers.compress(comp, data, state, policy)
    reference = copy.deepcopy(comp)
    handlers.decompress(reference.module)
    return dense, comp, report, reference


def layer_pair(n: int):
    w = smooth_matrix(n)
    data = encode({"w": w}, EncodeConfig(quality=75, coding="jpeg", layout="matrix", qtable="standard"))
    dense = torch.nn.Linear(n, n, bias=False)
    dense.weight.data = decode(data)["w"]
    matrix = load_matrices(data)[0]["w"]
    comp = handlers.CompressedLinear(matrix, None)
    reference = handlers.decompress(torch.nn.Sequential(copy.deepcopy(comp)))[0]
    report = {
        "resident_bytes": matrix.nbytes,
        "float32_bytes": n * n * 4,
        "pixels": n * n,
        "clipped_pixels": matrix.clipped,
        "density": matrix.density,
    }
    return dense, comp, report, reference


def _once(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def compare(fns: dict[str, object], repeat: int, budget: float = 0.05) -> dict[str, float]:
    """Median seconds per call of each function: ``repeat`` rounds, each timing a block of calls
    (about ``budget`` seconds) of every function in turn, so that noise hits all alike."""
    inner = {
        k: max(1, int(budget / max(_once(fn), _once(fn), 1e-6))) for k, fn in fns.items()
    }  # the first calls warm up
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            times[k].append(_once(lambda: [fn() for _ in range(inner[k])]) / inner[k])
    return {k: statistics.median(v) for k, v in times.items()}


def difference(a: dict[str, torch.Tensor] | torch.Tensor, b: dict[str, torch.Tensor] | torch.Tensor) -> float:
    pairs = zip(a.values(), b.values()) if isinstance(a, dict) else [(a, b)]
    return max(
        float((x.float() - y.float()).abs().max() / y.float().abs().max().clamp_min(1e-30))
        for x, y in pairs
        if x.is_floating_point()
    )


def rss(name: str, policy: str) -> int:
    """Process RSS (bytes) after loading ``name`` in a fresh process (``policy`` 'off': dense)
    and running it once."""
    code = (
        "import gc, sys; sys.path.insert(0, %r); import compressed_domain as c; from jpegweights import handlers; "
        "from jpegweights.codec import decode, load_manifest;"
        "data = (c.MODELS / %r / 'model.jpw').read_bytes(); state, manifest = decode(data), load_manifest(data); "
        "h = handlers.load(manifest, state);"
        "%s del state, data; gc.collect(); h.run(h.decode_request(c.requests(%r, 1), c.LIMITS));"
        "print(next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmRSS')))"
    ) % (
        str(ROOT / "benchmarks"),
        name,
        f"handlers.compress(h, data, state, {policy!r});" if policy != "off" else "",
        name,
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def run_case(label: str, pair, batch1, batch64, n64: int, repeat: int, rss_pair: tuple[int, int] | None) -> dict:
    dense, comp, report, reference = pair
    with torch.inference_mode():
        t1 = compare({"dense": lambda: dense(batch1), "compressed": lambda: comp(batch1)}, repeat)
        t64 = compare({"dense": lambda: dense(batch64), "compressed": lambda: comp(batch64)}, max(3, repeat // 3))
        out_c, out_ref, out_d = comp(batch64), reference(batch64), dense(batch64)
    row = {
        "case": label,
        "resident_bytes": report["resident_bytes"],
        "float32_bytes": report["float32_bytes"],
        "dense_bytes": report.get("dense_bytes", report["float32_bytes"]),
        "batch1_us": {k: v * 1e6 for k, v in t1.items()},
        "batch_n": n64,
        "throughput": {k: n64 / v for k, v in t64.items()},
        "diff_exact": difference(out_c, out_ref),
        "diff_libjpeg": difference(out_c, out_d),
        "clipped": report["clipped_pixels"] / max(1, report["pixels"]),
        "layers": report.get("layers", 1),
        "rss": rss_pair,
    }
    print_row(row)
    return row


def print_row(r: dict) -> None:
    b1, tp = r["batch1_us"], r["throughput"]
    rss = f"  RSS {r['rss'][0] / 2**20:.0f} -> {r['rss'][1] / 2**20:.0f} MiB" if r["rss"] else ""
    print(
        f"{r['case']:<34} weights {r['dense_bytes'] / 1024:>9,.0f} -> {r['resident_bytes'] / 1024:>8,.0f} KiB "
        f"({r['float32_bytes'] / r['resident_bytes']:.1f}x under float32)"
        f"  batch 1: {b1['dense']:>8,.0f} -> {b1['compressed']:>8,.0f} us ({b1['dense'] / b1['compressed']:.2f}x)"
        f"  batch {r['batch_n']}: {tp['dense']:>8,.0f} -> {tp['compressed']:>8,.0f} /s "
        f"({tp['compressed'] / tp['dense']:.2f}x)"
        f"  max diff {r['diff_exact']:.1e} (exact IDCT), {r['diff_libjpeg']:.1e} (libjpeg)"
        f"  {r['clipped']:.2%} of pixels clip{rss}",
        flush=True,
    )


def mnist_accuracy(data_dir: Path) -> None:
    """The MNIST MLP's test accuracy, dense (libjpeg's decode) and compressed (``auto``)."""
    from jpegweights.training.mnist import load_mnist

    test = load_mnist(data_dir, "test")
    dense, comp, _, _ = model_pair("mnist-mlp", "auto")
    request = handlers.Request(inputs=test.images.numpy().astype(np.float32)[:, None])
    a, b = (h.run(h.decode_request(request, LIMITS))["probabilities"].argmax(1) for h in (dense, comp))
    right = lambda p: float((p == test.labels).float().mean())  # noqa: E731
    print(
        f"MNIST MLP on the {len(test.labels):,} test digits: dense {right(a):.2%}, compressed {right(b):.2%}, "
        f"the same answer on {int((a == b).sum()):,}"
    )


def float_model(name: str) -> tuple[dict[str, torch.Tensor], EncodeConfig, dict]:
    """A served model's float weights, its package's encode settings, and the package's manifest."""
    from safetensors.torch import load_file

    manifest = load_manifest((MODELS / name / "model.jpw").read_bytes())
    return load_file(MODELS / name / "model.safetensors"), EncodeConfig.from_dict(manifest["config"]), manifest


def clamp_cost(name: str) -> None:
    """The served package against the same settings with ``clamp_free``, re-encoded from the
    float weights: bytes, encode time, and the pixels libjpeg clamps in the linear layers."""
    state, config, manifest = float_model(name)
    parts = []
    for clamp_free in (False, True):
        t = time.perf_counter()
        data = encode(
            state,
            dataclasses.replace(config, clamp_free=clamp_free),
            manifest.get("architecture"),
            manifest.get("handler"),
        )
        seconds = time.perf_counter() - t
        matrices = load_matrices(data)[0].values()
        clipped, pixels = sum(m.clipped for m in matrices), sum(m.rows * m.cols for m in matrices)
        gap = max((m.max_pixel_difference for m in matrices), default=0.0)
        parts.append(
            f"{'clamp-free' if clamp_free else 'plain'} {len(data):,} B, encode {seconds:.1f} s, "
            f"{clipped / pixels:.2%} of pixels clamp, largest gap to libjpeg {gap:.2f} steps"
        )
    print(f"{name}: " + "; ".join(parts))


def kept_by_quality(name: str, qualities: tuple[int, ...]) -> None:
    """The share of coefficients the linear layers keep with the package's settings at other
    qualities (re-encoded from the float weights)."""
    state, config, _ = float_model(name)
    names = {n for n, t in state.items() if n.endswith(".weight") and t.dim() == 2 and "embeddings" not in n}
    shares = []
    for q in qualities:
        matrices = load_matrices(encode(state, config.at_quality(q)), names)[0].values()
        shares.append(
            f"q{q} {sum(m.coefficients.val.numel() for m in matrices) / sum(m.rows * m.cols for m in matrices):.0%}"
        )
    print(f"{name}: coefficients kept by the linear layers at {config.qtable} table: {', '.join(shares)}")


def read_speed(name: str, repeat: int = 5) -> None:
    """Reading a model's linear layers' coefficients (jpeglib) against decoding them (libjpeg-turbo)."""
    import jpeglib

    from jpegweights.codec import jpeg
    from jpegweights.codec.coefficients import stream_path
    from jpegweights.codec.container import read

    data = (MODELS / name / "model.jpw").read_bytes()
    stored, manifest = read(data)
    names = {
        n
        for n, e in manifest["tensors"].items()
        if e["coding"] == "jpeg" and n.endswith(".weight") and len(e["shape"]) == 2 and "embeddings" not in n
    }
    streams = [stored[a["key"]] for n in names for a in manifest["tensors"][n]["atlases"]]
    weights = sum(int(np.prod(manifest["tensors"][n]["shape"])) for n in names)

    def coefficients_only() -> None:
        for s in streams:
            with stream_path(s.numpy().tobytes()) as path:
                jpeglib.read_dct(path).Y

    steps = {
        "jpeglib read_dct": coefficients_only,
        "libjpeg-turbo decode": lambda: [jpeg.decode(s) for s in streams],
        "load_matrices (checks, read, sparse)": lambda: load_matrices(data, names),
    }
    print(f"{name}: reading {len(names)} matrices ({weights:,} weights), medians of {repeat}:")
    for label, fn in steps.items():
        t = median_seconds(fn, repeat)
        print(f"  {label:<38} {t * 1e3:7.0f} ms  {weights * 4 / t / 1e6:6.0f} MB/s of float32")


class Predict(torch.nn.Module):
    """A handler's forward pass on a decoded batch, as a callable module."""

    def __init__(self, handler: handlers.Handler):
        super().__init__()
        self.handler = handler

    def forward(self, batch: dict) -> dict:
        return self.handler.predict(batch)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--no-rss", action="store_true")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=ROOT.parent / "shared" / "data" / "mnist",
        help="MNIST, for the MLP's test accuracy both ways",
    )
    args = p.parse_args(argv)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"medians of {args.repeat} runs; dense -> compressed"
    )
    rows = []
    for name, policy in CASES.items():
        if not (MODELS / name / "model.jpw").is_file():
            print(f"{name}: no package (make pretrained)")
            continue
        dense, comp, report, reference = model_pair(name, policy)
        report["dense_bytes"] = handlers.resident_bytes(dense.module)
        n64 = 8 if name == "mobilenet_v2" else 64
        b1, b64 = (dense.decode_request(requests(name, n), LIMITS) for n in (1, n64))
        rss_pair = None if args.no_rss else (rss(name, "off"), rss(name, policy))
        rows.append(
            run_case(
                f"{name} ({policy}: {report['layers']} layers)",
                (Predict(dense), Predict(comp), report, Predict(reference)),
                b1,
                b64,
                n64,
                args.repeat,
                rss_pair,
            )
        )
        del dense, comp, reference
        gc.collect()
    for n in (1024, 4096):
        pair = layer_pair(n)
        rows.append(
            run_case(
                f"smooth {n}x{n} q75 ({pair[2]['density']:.1%} kept)",
                pair,
                torch.randn(1, n),
                torch.randn(64, n),
                64,
                args.repeat,
                None,
            )
        )
    for name in CASES:
        if (MODELS / name / "model.safetensors").is_file():
            clamp_cost(name)
    if (args.data_dir / "t10k-images-idx3-ubyte.gz").is_file():
        mnist_accuracy(args.data_dir)
    if (MODELS / "all-minilm-l6-v2" / "model.jpw").is_file():
        kept_by_quality("all-minilm-l6-v2", (30, 50, 75))
        read_speed("all-minilm-l6-v2")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
