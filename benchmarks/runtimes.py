"""Forward passes per second of each runtime and thread layout, on a quiet CPU and beside a
CPU-bound process: what decides how the server runs its models (docs/service.md, "Runtimes").

    python benchmarks/runtimes.py [--models mobilenet_v2 ...] [--batch 4] [--seconds 3] [--repeat 3] [--out F]

For each model (as the store holds it: the package decoded, the handler built), each runtime
(eager PyTorch as the handler runs it; ONNX Runtime from the graph the server exports at load;
``torch.compile`` with ``--compile``) and each layout (workers x intra-op threads: 1x1, 1xN,
Nx1 where N is the CPUs this process may use; Nx1 is how the server runs), runs batches of
``--batch`` samples for ``--seconds`` and prints samples/s, median of ``--repeat`` runs; then the
same with a Python busy loop pinned to the first CPU. Inputs: MNIST test digits, the photos of
tests/data/photos, the sentences of benchmarks/data/sentences.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from jpegweights import cpus, handlers
from jpegweights.codec import load_package
from jpegweights.handlers import Request

ROOT = Path(__file__).resolve().parents[1]


def batch_for(handler: handlers.Handler, name: str, n: int, mnist: Path) -> handlers.Batch:
    if name.startswith("mnist"):
        from jpegweights.training.mnist import load_mnist

        digits = load_mnist(mnist, "test").images[:n].reshape(n, 784).float().numpy()
        return handler.decode_request(Request(inputs=digits))
    if handler.name == "image-classification":
        photos = sorted((ROOT / "tests" / "data" / "photos").glob("*.jpg"))
        return handler.decode_request(Request(images=[photos[i % len(photos)].read_bytes() for i in range(n)]))
    lines = [s for s in (ROOT / "benchmarks" / "data" / "sentences.txt").read_text().splitlines() if s]
    return handler.decode_request(Request(text=lines[:n]))


def rate(run: Callable[[], object], rows: int, workers: int, seconds: float) -> float:
    """Samples/s of ``workers`` threads each calling ``run`` for ``seconds``."""
    counts = [0] * workers
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < stop:
            run()
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(workers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) * rows / (time.perf_counter() - t0)


class Busy:
    """A CPU-bound process pinned to this process's first CPU, while the block runs."""

    def __enter__(self) -> Busy:
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        os.sched_setaffinity(self.proc.pid, {min(os.sched_getaffinity(0))})
        time.sleep(0.2)
        return self

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["mnist-mlp", "mnist-cnn", "mobilenet_v2", "all-minilm-l6-v2"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seconds", type=float, default=3)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also torch.compile (minutes of compiling per model)")
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    p.add_argument("--out", type=Path, help="write the results as JSON (benchmarks/figures.py renders them)")
    args = p.parse_args()
    n = cpus.available()
    layouts = sorted({(1, 1), (1, n), (n, 1)})
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    runtimes = ["eager", "onnxruntime"] + (["torch.compile"] if args.compile else [])
    print(f"{cpu}, {n} CPUs; batches of {args.batch}; samples/s, median of {args.repeat} runs of {args.seconds:g} s")
    print("| model | runtime | workers x threads | samples/s | beside a busy process |")
    print("|---|---|---|---:|---:|")
    rows = []
    for name in args.models:
        package = ROOT / "models" / name / "model.jpw"
        if not package.is_file():
            print(f"| {name} | not imported | | | |")
            continue
        state, manifest = load_package(package)
        handler = handlers.load(manifest, state)
        batch = batch_for(handler, name, args.batch, args.data_dir)
        for runtime in runtimes:
            for workers, threads in layouts:
                torch.set_num_threads(threads)
                if runtime == "torch.compile":
                    handlers.accelerate(handler, "eager")
                    handler.runner = torch.compile(handler.module)
                else:
                    choice = handlers.accelerate(handler, runtime, threads)
                    if choice.reason is not None:
                        sys.exit(f"{name} does not run on {runtime}: {choice.reason}")
                handler.run(batch)  # warm-up (and compiling)

                def measure() -> float:
                    return statistics.median(
                        rate(lambda: handler.run(batch), args.batch, workers, args.seconds) for _ in range(args.repeat)
                    )

                quiet = measure()
                with Busy():
                    shared = measure()
                row = {"model": name, "runtime": runtime, "workers": workers, "threads": threads}
                rows.append({**row, "quiet": round(quiet, 1), "shared": round(shared, 1)})
                print(f"| {name} | {runtime} | {workers} x {threads} | {quiet:,.0f} | {shared:,.0f} |", flush=True)
        handlers.accelerate(handler, "eager")
    if args.out:
        result = {"cpu": cpu, "cpus": n, "batch": args.batch, "repeat": args.repeat, "rows": rows}
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
