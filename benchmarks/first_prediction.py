"""Time to first prediction for a client with an empty cache: the .jpw (the MLP at quality 20,
MobileNetV2 as stored) against the float32 safetensors of the same model, over emulated links
of 10 Mbit/s and 1 Gbit/s.

    python benchmarks/first_prediction.py [--repeat 5] [--model mnist-mlp|mobilenet_v2]

The link is a bandwidth-limited TCP proxy on loopback (token bucket on the server-to-client
direction). Behind it: `jpegweights serve` for the package, and a plain static file server for
the float32 safetensors (rebuilt with the same handler). Each run starts from an empty cache
and ends when the first input (an MNIST-shaped image; the cat photo for MobileNetV2) is
classified: download, verify/decode, build the module, predict. Medians of --repeat.

"warm": in a process that has already imported its libraries (an application, a notebook).
"cold": a fresh `python` process per run, imports included (torch for both paths, torchvision
for MobileNetV2's architecture; the client starts importing it as soon as the package's header
has arrived, while the rest downloads).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


class ThrottledProxy:
    """127.0.0.1:<port> -> upstream, server-to-client bytes limited to ``rate`` bytes/s."""

    def __init__(self, upstream_port: int, rate: float):
        self.upstream_port, self.rate = upstream_port, rate
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self.ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    async def _handle(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pipe(src, dst, throttle: bool) -> None:
            try:
                while chunk := await src.read(16 * 1024):
                    if throttle:
                        await asyncio.sleep(len(chunk) / self.rate)
                    dst.write(chunk)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen) -> None:
    for _ in range(600):
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{url} not ready")


# what each model is asked first: an MNIST-shaped zero image, or the README's cat photo
SAMPLES = {"mnist-mlp": "zeros", "mobilenet_v2": str(ROOT / "examples" / "cat.jpg")}
QUALITY = {"mnist-mlp": 20, "mobilenet_v2": None}  # None: the stored package


def sample(model: str):
    import torch

    return torch.zeros(1, 784) if SAMPLES[model] == "zeros" else [SAMPLES[model]]


def first_prediction_jpw(url: str, model: str, cache: Path) -> float:
    from jpegweights.client import Client

    t0 = time.perf_counter()
    with Client(url, cache_dir=cache, progress=False) as c:
        loaded = c.load(model, quality=QUALITY[model])
    loaded.predict(sample(model))
    return time.perf_counter() - t0


def first_prediction_float32(url: str, model: str) -> float:
    from safetensors import safe_open

    from jpegweights.client import PackagedModel

    t0 = time.perf_counter()
    data = httpx.get(f"{url}/{model}/model.safetensors", timeout=300).content
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
        f.write(data)
        f.flush()
        with safe_open(f.name, "pt") as st:
            state = {k: st.get_tensor(k) for k in st.keys()}
            manifest = {k: json.loads(v) for k, v in st.metadata().items() if k in ("architecture", "handler")}
    PackagedModel.build(manifest, state).predict(sample(model))
    return time.perf_counter() - t0


COLD = {
    "jpw": (
        "from benchmarks.first_prediction import first_prediction_jpw as f; import sys; "
        "f(sys.argv[1], sys.argv[3], sys.argv[2])"
    ),
    "f32": (
        "from benchmarks.first_prediction import first_prediction_float32 as f; import sys; f(sys.argv[1], sys.argv[3])"
    ),
}


def cold(kind: str, url: str, cache: Path, model: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", COLD[kind], url, str(cache), model], cwd=ROOT, check=True)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--model", choices=sorted(SAMPLES), default="mnist-mlp")
    args = p.parse_args()
    model = args.model
    jpw_port, static_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "JPEGWEIGHTS_CACHE_DIR": tmp, "JPEGWEIGHTS_LOG_REQUESTS": "false"}
        servers = [
            subprocess.Popen(
                [str(Path(sys.executable).with_name("jpegweights")), "serve", "--port", str(jpw_port)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
            subprocess.Popen(
                [sys.executable, "-m", "http.server", str(static_port), "--bind", "127.0.0.1"],
                cwd=ROOT / "models",
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
        ]
        try:
            wait_ready(f"http://127.0.0.1:{jpw_port}/readyz", servers[0])
            wait_ready(f"http://127.0.0.1:{static_port}/", servers[1])
            params = {"model": model, **({"quality": QUALITY[model]} if QUALITY[model] else {})}
            sizes = (
                len(httpx.get(f"http://127.0.0.1:{jpw_port}/weights", params=params).content),
                (ROOT / "models" / model / "model.safetensors").stat().st_size,
            )
            print(
                f"{model}: .jpw {sizes[0]:,} bytes, float32 safetensors {sizes[1]:,} bytes; "
                f"median of {args.repeat} runs, empty cache each run"
            )
            print("| link | process | .jpw s | float32 safetensors s | ratio |")
            print("|---|---|---:|---:|---:|")
            for label, rate in (("10 Mbit/s", 10e6 / 8), ("1 Gbit/s", 1e9 / 8)):
                jpw_proxy, static_proxy = ThrottledProxy(jpw_port, rate), ThrottledProxy(static_port, rate)
                jpw, f32 = [], []
                for i in range(args.repeat):
                    jpw.append(
                        first_prediction_jpw(
                            f"http://127.0.0.1:{jpw_proxy.port}", model, Path(tmp) / f"client-{label}-{i}"
                        )
                    )
                    f32.append(first_prediction_float32(f"http://127.0.0.1:{static_proxy.port}", model))
                a, b = statistics.median(jpw), statistics.median(f32)
                print(f"| {label} | warm | {a:.3f} | {b:.3f} | {b / a:.1f}x |", flush=True)
                jpw_url, f32_url = f"http://127.0.0.1:{jpw_proxy.port}", f"http://127.0.0.1:{static_proxy.port}"
                a = statistics.median(
                    cold("jpw", jpw_url, Path(tmp) / f"cold-{label}-{i}", model) for i in range(args.repeat)
                )
                b = statistics.median(cold("f32", f32_url, Path(tmp), model) for _ in range(args.repeat))
                print(f"| {label} | cold | {a:.3f} | {b:.3f} | {b / a:.1f}x |", flush=True)
        finally:
            for s in servers:
                s.terminate()
                s.wait(10)


if __name__ == "__main__":
    main()
