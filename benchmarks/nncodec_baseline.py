"""NNCodec (Fraunhofer's reference implementation of the MPEG NNC standard) on the same model, at a
few QP values, for the evaluate report's comparison.

    python benchmarks/nncodec_baseline.py models/mnist-mlp/model.safetensors --data-dir ../shared/data/mnist

NNCodec pins numpy<2, so it runs in its own virtual environment (.venv-nncodec, created and
installed from PyPI on first use with the versions pinned in benchmarks/nncodec-requirements.txt:
a few minutes, it brings its own torch). The two processes exchange only safetensors and JSON
files. Prints a Markdown table and writes it to
docs/results/<model dir>/nncodec.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-nncodec"
QPS = (-32, -24, -20, -16, -12)


def worker(model: Path, out: Path, qps: list[int]) -> None:
    """Runs inside .venv-nncodec: code and decode the model's float tensors at each QP (other
    tensors, such as BatchNorm's step counters, are kept as they are and counted as stored)."""
    import time

    from nncodec.nn import decode, encode
    from safetensors.numpy import load_file, save_file

    state = load_file(str(model))
    floats = {k: v for k, v in state.items() if v.dtype.kind == "f"}
    others = {k: v for k, v in state.items() if k not in floats}
    results = {}
    for qp in qps:
        t0 = time.perf_counter()
        bitstream = encode(dict(floats), args={"qp": qp})
        t1 = time.perf_counter()
        decoded = decode(bitstream)
        t2 = time.perf_counter()
        results[qp] = {
            "bytes": len(bitstream) + sum(v.nbytes for v in others.values()),
            "encode_s": t1 - t0,
            "decode_s": t2 - t1,
        }
        save_file({**{k: v.astype("float32") for k, v in decoded.items()}, **others}, str(out / f"qp{qp}.safetensors"))
    (out / "sizes.json").write_text(json.dumps(results))


def ensure_venv() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {VENV} (nncodec from PyPI, a few minutes)", file=sys.stderr)
        venv.create(VENV, with_pip=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "-r",
                str(ROOT / "benchmarks" / "nncodec-requirements.txt"),
            ],
            check=True,
        )
    return python


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("--data-dir", default="../shared/data/mnist")
    p.add_argument("--qps", default=",".join(map(str, QPS)))
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    qps = [int(q) for q in args.qps.split(",")]
    if args.worker:
        worker(args.model, args.worker, qps)
        return

    from safetensors.torch import load_file

    from jpegweights.pipeline import load_model
    from jpegweights.handlers import build
    from jpegweights.training.evaluate import float32_bytes
    from jpegweights.training.mnist import load_mnist
    from jpegweights.training.train import accuracy

    state, spec = load_model(args.model)
    test = load_mnist(args.data_dir, "test")
    model = build(spec).eval()
    model.load_state_dict(state)
    base, f32 = accuracy(model, spec, test), float32_bytes(state)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(ensure_venv()), __file__, str(args.model.resolve()), f"--qps={args.qps}", "--worker", tmp]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=tmp)  # it drops bitstream files in its cwd
        sizes = json.loads((Path(tmp) / "sizes.json").read_text())
        lines = [
            f"NNCodec (MPEG NNC reference codec) on `{args.model}`, default settings but `qp`; "
            f"float32 {f32:,} bytes, test accuracy {base * 100:.2f}%.",
            "",
            "| method | setting | bytes | × smaller than float32 | test accuracy | change (points) |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for qp in qps:
            model.load_state_dict(load_file(str(Path(tmp) / f"qp{qp}.safetensors")))
            acc, nbytes = accuracy(model, spec, test), sizes[str(qp)]["bytes"]
            lines.append(
                f"| NNCodec | qp {qp} | {nbytes:,} | {f32 / nbytes:.1f} | {acc * 100:.2f}% | "
                f"{(acc - base) * 100:+.2f} |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    out = ROOT / "docs" / "results" / args.model.parent.name / "nncodec.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
