"""Every method on every model, side by side, in one run: writes docs/results/benchmarks.json and
docs/benchmarks.png, then rewrites the figure blocks that render that JSON (docs/benchmarks.md, the
README: benchmarks/figures.py).

    .venv/bin/python benchmarks/compare.py [--models mnist-mlp mnist-cnn mobilenet_v2 all-minilm-l6-v2]
    .venv/bin/python benchmarks/compare.py --models all-mpnet-base-v2   # after `make pretrained-large`

Models and fidelity, always on inputs no calibration saw:
- MNIST MLP and CNN (the bundled float weights): test accuracy on 10,000 images;
- MobileNetV2 (`make pretrained`'s float source): mean KL divergence of the output distribution
  against the float model, and top-1 agreement, on the 6 views (benchmarks/pretrained_fidelity.py)
  of each of the 7 odd-numbered photos in tests/data/photos;
- all-MiniLM-L6-v2 and all-mpnet-base-v2: mean (and minimum) cosine against the float model's
  embeddings of benchmarks/pretrained_fidelity.py's 20 sentences.

Methods: float32 safetensors; int8 per row; 4-bit per group of 64 values (asymmetric, float16
scale and minimum per group); NNCodec (its own venv, .venv-nncodec, created on first use;
benchmarks/nncodec_baseline.py); jpegweights with the seed preset for MNIST (`compress --preset seed`,
quality 20, as the bundled packages) and the defaults at quality 90 for the pretrained models (as
`import`); jpegweights calibrated (`compress --calibrate`: the views of the 7 even-numbered photos
for MobileNetV2, benchmarks/data/sentences.txt for the text models, with the bundled kinds of
input as a floor, as by default), with error compensation (and a text model's token embeddings
coded by use, as by default) and, at the first target, without (`--no-compensate`; not for
MPNet, whose searches take a quarter of an hour each); for MNIST the
labelled `--target-drop 0.3` search on 5,000 held-out training images). Small and
1-D tensors are float16 in int8, 4-bit and the pretrained jpegweights rows; NNCodec codes them itself.
Encode time is the whole choice and coding (calibration included); decode is to float tensors
in memory. The four default models take 15 to 25 minutes on 2 cores (the first run also creates
.venv-nncodec); MPNet about half an hour.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
MODELS = ("mnist-mlp", "mnist-cnn", "mobilenet_v2", "all-minilm-l6-v2")
LARGE = ("all-mpnet-base-v2",)  # after `make pretrained-large`; run when named
NNCODEC_QPS = {"mnist-mlp": (-20,), "mnist-cnn": (-20,), "mobilenet_v2": (-38, -32), "all-minilm-l6-v2": (-38, -32),
               "all-mpnet-base-v2": (-38, -32)}  # fmt: skip
CALIBRATED = {"mobilenet_v2": ("kl", (0.015, 0.02)), "all-minilm-l6-v2": ("cosine", (0.996, 0.995)),
              "all-mpnet-base-v2": ("cosine", (0.995,))}  # fmt: skip
PLAIN = ("mobilenet_v2", "all-minilm-l6-v2")  # also searched --no-compensate, at the first target
PRETRAINED = dict(quality=90)  # the Makefile's `import` settings: the default preset at q90


def timed(fn: Callable, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def float16_small(t: torch.Tensor) -> bool:
    return t.is_floating_point() and (t.dim() < 2 or t.numel() < 4096)


def four_bit(state: dict[str, torch.Tensor], group: int = 64) -> tuple[int, dict]:
    """(bytes, packed): 4-bit codes per group of ``group`` values along each row, with a float16
    scale and minimum per group; small and 1-D float tensors in float16."""
    nbytes, packed = 0, {}
    for name, t in state.items():
        if not t.is_floating_point():
            nbytes, packed[name] = nbytes + t.numel() * t.element_size(), t
        elif float16_small(t):
            nbytes, packed[name] = nbytes + t.numel() * 2, t.half()
        else:
            rows = t.reshape(t.shape[0], -1).float()
            g = torch.nn.functional.pad(rows, (0, -rows.shape[1] % group)).reshape(rows.shape[0], -1, group)
            lo, hi = g.amin(-1, keepdim=True).half(), g.amax(-1, keepdim=True)
            scale = ((hi - lo.float()) / 15).half()
            q = ((g - lo.float()) / torch.where(scale > 0, scale, 1).float()).round().clamp(0, 15).to(torch.uint8)
            packed[name] = (q, scale, lo, t.shape, t.dtype)
            nbytes += math.ceil(t.numel() / 2) + lo.numel() * 4
    return nbytes, packed


def four_bit_decode(packed: dict) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in packed.items():
        if isinstance(p, tuple):
            q, scale, lo, shape, dtype = p
            rows = torch.addcmul(lo.float(), q.float(), scale.float()).reshape(shape[0], -1)
            out[name] = rows[:, : math.prod(shape[1:])].reshape(shape).to(dtype)
        else:
            out[name] = p.to(torch.float32) if p.dtype == torch.float16 else p
    return out


class Fidelity:
    """Measures a decoded state against the float model: MNIST test accuracy; MobileNetV2 on
    the views of ``photos`` (by default the odd-numbered ones, which calibration never sees);
    MiniLM on pretrained_fidelity.py's sentences (or on ``sentences``)."""

    def __init__(
        self,
        model: str,
        state: dict[str, torch.Tensor],
        manifest: dict,
        photos: slice = slice(1, None, 2),
        sentences: list[str] | None = None,
    ):
        from jpegweights import handlers
        from jpegweights.handlers import Limits, Request
        from pretrained_fidelity import SENTENCES, photo_views

        self.model, self.manifest = model, manifest
        if model.startswith("mnist"):
            from jpegweights.handlers import build
            from jpegweights.training.mnist import load_mnist
            from jpegweights.training.train import accuracy

            test = load_mnist(ROOT.parent / "shared" / "data" / "mnist", "test")
            module = build(manifest["architecture"]).eval()

            def acc(s):
                module.load_state_dict(s)
                return accuracy(module, manifest["architecture"], test)

            self.acc, self.base = acc, acc(state)
            return
        self.handlers = handlers
        reference = handlers.load(manifest, state)
        if model == "mobilenet_v2":
            chosen = sorted((ROOT / "tests" / "data" / "photos").glob("*.jpg"))[photos]
            self.batch = reference.decode_request(photo_views(chosen), Limits(max_samples=10_000))
        else:
            self.batch = reference.decode_request(Request(text=sentences or SENTENCES))
        self.expected = reference.run(self.batch)

    def __call__(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        if self.model.startswith("mnist"):
            acc = self.acc(state)
            return {"accuracy": acc, "change_points": (acc - self.base) * 100}
        got = self.handlers.load(self.manifest, state).run(self.batch)
        if "probabilities" in got:
            from jpegweights.pipeline.calibrate import mean_kl

            same = (got["predictions"] == self.expected["predictions"]).float().mean()
            return {"kl": mean_kl(self.expected["probabilities"], got["probabilities"]), "top1": float(same)}
        cos = torch.nn.functional.cosine_similarity(self.expected["embedding"], got["embedding"], dim=1)
        return {"cosine": float(cos.mean()), "cosine_min": float(cos.min())}


def shown(f: dict[str, float]) -> str:
    if "accuracy" in f:
        return f"{f['accuracy'] * 100:.2f}% ({f['change_points']:+.2f})"
    if "kl" in f:
        return f"KL {f['kl']:.4f}, top-1 {f['top1'] * 100:.1f}%"
    return f"cosine {f['cosine']:.5f} (min {f['cosine_min']:.5f})"


def nncodec(model: str, source: Path, qps: tuple[int, ...]) -> list[dict]:
    """NNCodec's rows, from a worker in its own venv (safetensors and JSON across)."""
    from safetensors.torch import load_file

    from nncodec_baseline import ensure_venv

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            str(ensure_venv()),
            str(ROOT / "benchmarks" / "nncodec_baseline.py"),
            str(source),
            f"--qps={','.join(map(str, qps))}",
            "--worker",
            tmp,
        ]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
        results = json.loads((Path(tmp) / "sizes.json").read_text())
        return [
            {"setting": f"qp {qp}", **results[str(qp)], "state": load_file(str(Path(tmp) / f"qp{qp}.safetensors"))}
            for qp in qps
        ]


def run_model(model: str, log: Callable[[str], None]) -> list[dict]:
    from safetensors.torch import load as load_bytes
    from safetensors.torch import save as save_bytes

    from jpegweights.codec import EncodeConfig, decode, encode
    from jpegweights.handlers.importers import read_state
    from jpegweights.pipeline import compress

    folder = ROOT / "models" / model
    state, metadata = read_state(folder / "model.safetensors")
    manifest = {k: json.loads(metadata[k]) for k in ("architecture", "handler") if k in metadata}
    fidelity = Fidelity(model, state, manifest)
    f32 = sum(t.numel() * 4 for t in state.values())
    rows = []

    def add(method: str, setting: str, nbytes: int, decoded: dict, encode_s: float, decode_s: float) -> None:
        row = {
            "method": method,
            "setting": setting,
            "bytes": nbytes,
            "ratio": f32 / nbytes,
            "encode_s": encode_s,
            "decode_s": decode_s,
            **fidelity(decoded),
        }
        log(f"{model}: {method} {setting}: {nbytes:,} B {row['ratio']:.2f}x {shown(row)}")
        rows.append(row)

    def jpw(
        method: str, setting: str, config: EncodeConfig, extra_s: float = 0.0, hessians: dict | None = None
    ) -> None:
        data, enc = timed(
            lambda: encode(state, config, manifest.get("architecture"), manifest.get("handler"), hessians=hessians)
        )
        decoded, dec = timed(decode, data)
        add(method, setting, len(data), decoded, extra_s + enc, dec)

    data, enc = timed(save_bytes, {k: v.contiguous() for k, v in state.items()})
    decoded, dec = timed(load_bytes, data)
    add("float32", "safetensors", len(data), decoded, enc, dec)
    mnist = model.startswith("mnist")
    raw = {} if mnist else {"raw_dtype": "float16"}
    jpw("int8", "per row", EncodeConfig(coding="int8", **raw))
    (nbytes, packed), enc = timed(four_bit, state)
    decoded, dec = timed(four_bit_decode, packed)
    add("4-bit", "groups of 64", nbytes, decoded, enc, dec)
    for r in nncodec(model, folder / "model.safetensors", NNCODEC_QPS[model]):
        add("NNCodec", r["setting"], r["bytes"], r["state"], r["encode_s"], r["decode_s"])
    if mnist:
        from jpegweights.training.evaluate import search_qualities
        from jpegweights.training.mnist import Split, load_mnist

        jpw("jpegweights", "seed preset (q20)", EncodeConfig.preset("seed"))
        train = load_mnist(ROOT.parent / "shared" / "data" / "mnist", "train")
        validation = Split(train.images[-5000:], train.labels[-5000:])
        config, search_s = timed(
            search_qualities, state, manifest["architecture"], validation, 0.003, settings=EncodeConfig.preset("seed")
        )
        jpw("jpegweights calibrated", "--target-drop 0.3", config, search_s)
        return rows
    jpw("jpegweights", "default (q90)", EncodeConfig(**PRETRAINED))
    metric, targets = CALIBRATED[model]
    with tempfile.TemporaryDirectory() as tmp:
        if model == "mobilenet_v2":
            from pretrained_fidelity import views

            for photo in sorted((ROOT / "tests" / "data" / "photos").glob("*.jpg"))[0::2]:
                for i, view in enumerate(views(photo)):
                    (Path(tmp) / f"{photo.stem}-{i}.png").write_bytes(view)
            inputs = Path(tmp)
        else:
            inputs = ROOT / "benchmarks" / "data" / "sentences.txt"
        flag = "--max-kl" if metric == "kl" else "--min-cosine"
        for compensate in (False, True) if model in PLAIN else (True,):  # compress --calibrate [--no-compensate]
            for target in targets if compensate else targets[:1]:
                with tempfile.TemporaryDirectory() as cache:  # no curves from an earlier run: the whole search is timed
                    found, enc = timed(lambda: compress(state, EncodeConfig(**PRETRAINED), data=inputs, target=target,
                                                        metric=metric, compensate=compensate, cache_dir=cache,
                                                        architecture=manifest.get("architecture"),
                                                        handler=manifest.get("handler")))  # fmt: skip
                decoded, dec = timed(decode, found.data)
                add(
                    "jpegweights calibrated",
                    f"{flag} {target}" + ("" if compensate else " --no-compensate"),
                    len(found.data),
                    decoded,
                    enc,
                    dec,
                )
    return rows


def fidelity_header(model: str) -> tuple[str, str]:
    if model.startswith("mnist"):
        return "test accuracy (change, points)", "accuracy"
    if model == "mobilenet_v2":
        return "held-out mean KL, top-1 agreement", "kl"
    return "held-out mean cosine (min)", "cosine"


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6))
    for ax, (model, rows) in zip([axes] if len(results) == 1 else axes, results.items()):
        label, key = fidelity_header(model)
        series = (
            "float32",
            "int8",
            "4-bit",
            "NNCodec",
            "jpegweights",
            "jpegweights calibrated --no-compensate",
            "jpegweights calibrated",
        )
        for method, color in zip(series, ("k", "C0", "C1", "C3", "C2", "C5", "C4")):
            points = [
                r
                for r in rows
                if r["method"] + (" --no-compensate" if r["setting"].endswith("--no-compensate") else "") == method
                and not (key == "kl" and r[key] == 0)
            ]
            if points:
                ax.plot(
                    [r["ratio"] for r in points],
                    [r["change_points"] if key == "accuracy" else r[key] for r in points],
                    "o-",
                    color=color,
                    label=method,
                    ms=5,
                )
        ax.set_title(model)
        ax.set_xlabel("× smaller than float32")
        ax.set_ylabel(
            {"accuracy": "accuracy change (points)", "kl": "mean KL (lower is better)", "cosine": "mean cosine"}[key]
        )
        if key == "kl":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS + LARGE)
    p.add_argument("--out", type=Path, default=ROOT / "docs")
    args = p.parse_args()
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    path = args.out / "results" / "benchmarks.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results.update({m: run_model(m, log) for m in args.models})  # models not run keep their last figures
    log(f"{time.perf_counter() - t0:.0f} s")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=float) + "\n")
    plot(results, args.out / "benchmarks.png")
    if args.out == ROOT / "docs":
        import figures

        figures.main(["--write"])  # the tables in docs/benchmarks.md and the README render this JSON
    for model, rows in results.items():
        print(f"\n{model}")
        for r in rows:
            print(f"{r['method']:24} {r['setting']:34} {r['bytes']:>11,} {r['ratio']:6.2f}  {shown(r)}")


if __name__ == "__main__":
    main()
