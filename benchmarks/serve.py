"""Serving throughput and latency on loopback, against a plain FastAPI endpoint.

    python benchmarks/serve.py [--repeat 3] [--models mnist-mlp mnist-cnn mobilenet_v2] [--concurrency 1 16 64]

For each model (the MNIST MLP and CNN, MobileNetV2 on the photos in tests/data/photos as
base64 JPEGs, the text models on the sentences of benchmarks/data/sentences.txt, one per
request) and each server (jpegweights with batching on, with batching
off, the reference: a plain FastAPI endpoint that runs the same model once per request, and
LitServe with its own dynamic batching, given the batch limit that jpegweights measured for the
model at load, if ``make bench-deps`` has made its venv),
starts the server as a subprocess on 127.0.0.1, measures start-up to ready, then drives
single-sample POSTs with ``wrk`` (Debian package ``wrk``; a C load
generator, so the client costs little CPU) at concurrency 1, 8 and 64 (``--concurrency``) for ``--seconds`` each.
Prints requests/s and p50/p99 latency, medians over ``--repeat`` runs. Bounded in time;
loopback only. Client and server share the machine's cores, as they do for every row.

``--eager``: also a jpegweights server with ``RUNTIME=eager`` (eager PyTorch, not ONNX Runtime).

``--shared``: each row is measured again with a CPU-bound process (a Python busy loop) pinned
to the first CPU the server may use, as other work shares a machine or a pod's node, and the
share of the quiet throughput each server keeps is printed beside it.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
LITSERVE_PYTHON = ROOT / ".venv-litserve" / "bin" / "python"  # `make bench-deps`
EAGER = "jpegweights, batching on, eager PyTorch"  # --eager: the runtime as it was before ONNX Runtime


# ---------------------------------------------------------------- the reference server


def reference_app(model_dir: Path):
    """The baseline LitServe measures itself against: one forward pass per request, with the
    same handler (so the same pre- and post-processing) and no batching."""
    from fastapi import FastAPI

    from jpegweights import handlers
    from jpegweights.codec import load_package
    from jpegweights.service.inputs import predict_request
    from jpegweights.service.schemas import PredictRequest

    state, manifest = load_package(model_dir / "model.jpw")
    handler = handlers.load(manifest, state)
    app = FastAPI()

    @app.get("/readyz")
    def ready() -> dict:
        return {"ready": True}

    @app.post("/predict")
    def predict(body: dict) -> dict:
        request = predict_request(PredictRequest.model_validate(body), handler.options)
        return handler.encode_response(handler.run(handler.decode_request(request)), request)

    return app


# ---------------------------------------------------------------- harness


def start(kind: str, model: str, port: int, cache: str, max_batch_size: int) -> tuple[subprocess.Popen, float]:
    ready = "/readyz"
    if kind == "reference":
        cmd = [sys.executable, __file__, "--reference", model, "--port", str(port)]
    elif kind == "litserve":
        peer = ROOT / "benchmarks" / "litserve_peer.py"
        cmd, ready = (
            [
                str(LITSERVE_PYTHON),
                str(peer),
                "--model",
                model,
                "--port",
                str(port),
                "--max-batch-size",
                str(max_batch_size),
            ],
            "/health",
        )
    else:
        cmd = [
            str(Path(sys.executable).with_name("jpegweights")),
            "serve",
            "--port",
            str(port),
            "--model-dir",
            str(ROOT / "models"),
        ]
        if kind == "jpegweights, batching off":
            cmd.append("--no-batching")
    env = {
        **os.environ,
        "JPEGWEIGHTS_CACHE_DIR": cache,
        "JPEGWEIGHTS_LOG_REQUESTS": "false",
        "JPEGWEIGHTS_DEFAULT_MODEL": model,
        "JPEGWEIGHTS_RUNTIME": "eager" if kind == EAGER else "auto",
    }
    if kind.startswith("jpegweights"):  # a store of this model alone: the others would share the cores
        store = Path(cache) / f"store-{model}"
        if not store.exists():
            store.mkdir()
            (store / model).symlink_to(ROOT / "models" / model, target_is_directory=True)
        cmd[cmd.index("--model-dir") + 1] = str(store)
    t0 = time.perf_counter()
    # a session of its own: LitServe's worker processes are stopped with their parent (stop())
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    while time.perf_counter() - t0 < 120:
        try:
            if httpx.get(f"http://127.0.0.1:{port}{ready}", timeout=1).status_code == 200:
                return proc, time.perf_counter() - t0
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{kind} did not become ready")


def stop(proc: subprocess.Popen) -> None:
    import signal

    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    try:  # LitServe's API-server child can outlive its parent for 30 s, waiting on requests
        os.killpg(proc.pid, signal.SIGKILL)  # that will never be answered, and skew the next rows
    except ProcessLookupError:
        pass
    proc.wait()


@contextmanager
def busy_beside(pid: int) -> Iterator[None]:
    """A CPU-bound process pinned to the first CPU that process ``pid`` may use, while the
    block runs."""
    cpu = min(os.sched_getaffinity(pid))
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(hog.pid, {cpu})
        yield
    finally:
        hog.kill()
        hog.wait()


WRK_SCRIPT = """
local bodies = {}
for line in io.lines(os.getenv("BODIES")) do bodies[#bodies + 1] = line end
local i = 0
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", "/predict", {["Content-Type"] = "application/json"}, bodies[i])
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.timeout))
end
"""


def load(url: str, bodies_file: str, script: str, concurrency: int, seconds: float) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) from one wrk run."""
    cmd = [
        "wrk",
        "-t",
        "1" if concurrency < 8 else "2",
        "-c",
        str(concurrency),
        "-d",
        f"{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        script,
        url,
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "BODIES": bodies_file}, timeout=seconds + 30
    ).stdout
    line = next(row for row in out.splitlines() if row.startswith("RESULT"))
    requests, duration_us, p50_us, p99_us, errors = map(int, line.split()[1:])
    if errors:
        raise RuntimeError(f"{errors} failed requests: {out}")
    return requests / (duration_us / 1e6), p50_us / 1e3, p99_us / 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    p.add_argument("--reference", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=8100, help="the first port; each server takes the next")
    p.add_argument(
        "--models",
        nargs="+",
        default=["mnist-mlp", "mnist-cnn"],
        help="also: mobilenet_v2, all-minilm-l6-v2, all-mpnet-base-v2 (after `make pretrained-large`)",
    )
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 64])
    p.add_argument("--shared", action="store_true", help="also measure each row beside a CPU-bound process")
    p.add_argument("--eager", action="store_true", help="also serve with RUNTIME=eager (eager PyTorch)")
    args = p.parse_args()
    if args.reference:
        import uvicorn

        uvicorn.run(
            reference_app(ROOT / "models" / args.reference),
            host="127.0.0.1",
            port=args.port,
            log_level="warning",
            access_log=False,
        )
        return

    import json
    import shutil

    from jpegweights.training.mnist import load_mnist

    if not shutil.which("wrk"):
        sys.exit("benchmarks/serve.py needs wrk: apt-get install wrk")
    import base64

    images = load_mnist(args.data_dir, "test").images[:1000]
    photos = sorted((ROOT / "tests" / "data" / "photos").glob("*.jpg"))
    bodies_for = {
        "mnist-mlp": [{"inputs": [im.reshape(784).tolist()]} for im in images],
        "mnist-cnn": [{"inputs": [im.reshape(784).tolist()]} for im in images],
        "mobilenet_v2": [{"images": [base64.b64encode(p.read_bytes()).decode()]} for p in photos],
    }
    sentences = [line for line in (ROOT / "benchmarks" / "data" / "sentences.txt").read_text().splitlines() if line]
    for text_model in ("all-minilm-l6-v2", "all-mpnet-base-v2"):
        bodies_for[text_model] = [{"text": [line]} for line in sentences]
    print(
        f"wrk, {args.seconds:g} s per run, median of {args.repeat} runs; single-sample requests; "
        f"{os.cpu_count()} cores shared by client and server"
    )
    shared_head = (" shared requests/s | shared p99 ms | kept |", "---:|---:|---:|") if args.shared else ("", "")
    print(f"| model | server | start-up to ready s | concurrency | requests/s | p50 ms | p99 ms |{shared_head[0]}")
    print(f"|---|---|---:|---:|---:|---:|---:|{shared_head[1]}")
    ports = itertools.count(args.port)
    with tempfile.TemporaryDirectory() as cache:
        script = Path(cache) / "post.lua"
        script.write_text(WRK_SCRIPT)
        for model in args.models:
            bodies = Path(cache) / f"bodies-{model}.jsonl"
            bodies.write_text("".join(json.dumps(b) + "\n" for b in bodies_for[model]))
            kinds = ["jpegweights, batching on", *([EAGER] if args.eager else []), "jpegweights, batching off",
                     "reference", *(["litserve"] if LITSERVE_PYTHON.exists() else [])]  # fmt: skip
            max_batch_size = 64
            for kind in kinds:
                # a port of its own: a stopped LitServe's child may still hold the last one
                port = next(ports)
                proc, startup = start(kind, model, port, cache, max_batch_size)
                try:
                    url = f"http://127.0.0.1:{port}"
                    if kind.startswith("jpegweights"):
                        described = httpx.get(f"{url}/models/{model}").json()
                        runtime = described["runtime"]["name"]
                        if kind == "jpegweights, batching on":  # LitServe gets the batch limit ours measured
                            max_batch_size = described["max_batch_size"]
                        kind = f"{kind} ({runtime}" + (
                            f", up to {described['max_batch_size']})" if "batching on" in kind else ")"
                        )
                    elif kind == "litserve":
                        kind = f"{kind} (up to {max_batch_size})"
                    load(url, str(bodies), str(script), 8, 1)  # warm-up
                    for c in args.concurrency:
                        runs = [load(url, str(bodies), str(script), c, args.seconds) for _ in range(args.repeat)]
                        rps, p50, p99 = (statistics.median(r[i] for r in runs) for i in range(3))
                        row = f"| {model} | {kind} | {startup:.2f} | {c} | {rps:,.0f} | {p50:.1f} | {p99:.1f} |"
                        if args.shared:
                            with busy_beside(proc.pid):
                                runs = [
                                    load(url, str(bodies), str(script), c, args.seconds) for _ in range(args.repeat)
                                ]
                            s_rps, s_p99 = (statistics.median(r[i] for r in runs) for i in (0, 2))
                            shown = f"{s_rps:,.0f} | {s_p99:.1f}" if s_rps else "none within the run | –"
                            row += f" {shown} | {s_rps / rps:.0%} |"
                        print(row, flush=True)
                finally:
                    stop(proc)


if __name__ == "__main__":
    main()
