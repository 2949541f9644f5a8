"""Time to first prediction for a client with an empty cache: the .jpw (the MLP at quality 20,
the others as stored) against the float32 safetensors of the same model, over emulated links.

    python benchmarks/first_prediction.py [--repeat 5] [--model mnist-mlp] [--links 10,1000] [--out FILE]

The link is a bandwidth-limited TCP proxy on loopback (a token bucket 20 ms deep on the
server-to-client direction, in the benchmark's process; --links in Mbit/s, by default 10 and
1000, or 100 and 1000 for all-mpnet-base-v2). On 2 cores shared with both servers and the
client it falls short of 1 Gbit/s: the time of the .jpw's last byte says what it gave.
Behind it: `jpegweights serve` for the package, and a plain static file server for the float32
safetensors (rebuilt with the same handler). Each run starts from an empty cache and ends when
the first input (an MNIST-shaped image; the cat photo for MobileNetV2; a sentence for text
models) is answered: download (the client decodes each atlas as its bytes arrive), verify,
build the module, predict. Medians of --repeat. For the .jpw it also reports how long after
the download's last byte the model was ready (built, before the prediction).

"warm": in a process that has already imported its libraries (an application, a notebook).
"cold": a fresh `python` process per run, imports included (torch for both paths, torchvision
or transformers for the architecture; the client starts importing it as soon as the package's
manifest has arrived, while the rest downloads).
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
            due = time.perf_counter()  # when the link is free again: a token bucket 20 ms deep, so
            try:  # that oversleeping a chunk's turn is made up, and the rate holds on average
                while chunk := await src.read(256 * 1024):
                    if throttle:
                        due = max(due, time.perf_counter() - 0.02) + len(chunk) / self.rate
                        await asyncio.sleep(due - time.perf_counter())
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


# what each model is asked first: an MNIST-shaped zero image, the README's cat photo, a sentence
SAMPLES = {
    "mnist-mlp": "zeros",
    "mobilenet_v2": str(ROOT / "examples" / "cat.jpg"),
    "all-minilm-l6-v2": "A man is playing a guitar.",
    "all-mpnet-base-v2": "A man is playing a guitar.",
}
QUALITY = {"mnist-mlp": 20}  # otherwise the stored package
LINKS = {"all-mpnet-base-v2": (100, 1000)}  # Mbit/s; otherwise 10 and 1000


def sample(model: str):
    import torch

    return torch.zeros(1, 784) if SAMPLES[model] == "zeros" else [SAMPLES[model]]


class LastByte(httpx.HTTPTransport):
    """A transport that notes when the last byte of a /weights answer arrived."""

    at = 0.0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path != "/weights":
            return response
        tap = self

        class Stream(httpx.SyncByteStream):
            def __iter__(self):
                for chunk in response.stream:
                    tap.at = time.perf_counter()
                    yield chunk

            def close(self):
                response.stream.close()

        return httpx.Response(response.status_code, headers=response.headers, stream=Stream(), request=request)


def first_prediction_jpw(url: str, model: str, cache: Path) -> dict[str, float]:
    """Seconds to the first answer, and from the download's last byte to the model being built."""
    from jpegweights.client import Client

    t0 = time.perf_counter()
    tap = LastByte()
    with Client(url, cache_dir=cache, progress=False, transport=tap) as c:
        loaded = c.load(model, quality=QUALITY.get(model))
    ready = time.perf_counter()
    loaded.predict(sample(model))
    return {"total": time.perf_counter() - t0, "download": tap.at - t0, "after_last_byte": ready - tap.at}


def first_prediction_float32(url: str, model: str) -> dict[str, float]:
    from safetensors import safe_open

    from jpegweights.client import PackagedModel

    t0 = time.perf_counter()
    data = httpx.get(f"{url}/{model}/model.safetensors", timeout=600).content
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
        f.write(data)
        f.flush()
        with safe_open(f.name, "pt") as st:
            state = {k: st.get_tensor(k) for k in st.keys()}
            manifest = {k: json.loads(v) for k, v in st.metadata().items() if k in ("architecture", "handler")}
    PackagedModel.build(manifest, state).predict(sample(model))
    return {"total": time.perf_counter() - t0}


COLD = (
    "import json, sys; from benchmarks.first_prediction import first_prediction_jpw as jpw, "
    "first_prediction_float32 as f32; kind, url, model, cache = sys.argv[1:]; "
    "print(json.dumps(jpw(url, model, cache) if kind == 'jpw' else f32(url, model)))"
)


def cold(kind: str, url: str, cache: Path, model: str) -> dict[str, float]:
    """A fresh process's run, its interpreter's start and imports included in ``total``."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", COLD, kind, url, model, str(cache)], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    return {**json.loads(out.splitlines()[-1]), "total": time.perf_counter() - t0}


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--model", choices=sorted(SAMPLES), default="mnist-mlp")
    p.add_argument("--links", help="link rates in Mbit/s, comma-separated")
    p.add_argument("--out", type=Path, help="also write the table as JSON (what docs/ shows)")
    args = p.parse_args()
    model = args.model
    links = [float(x) for x in args.links.split(",")] if args.links else LINKS.get(model, (10, 1000))
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
            params = {"model": model, **({"quality": QUALITY[model]} if model in QUALITY else {})}
            sizes = (
                len(httpx.get(f"http://127.0.0.1:{jpw_port}/weights", params=params, timeout=600).content),
                (ROOT / "models" / model / "model.safetensors").stat().st_size,
            )
            print(
                f"{model}: .jpw {sizes[0]:,} bytes, float32 safetensors {sizes[1]:,} bytes; "
                f"median of {args.repeat} runs, empty cache each run"
            )
            # warm means imported: one untimed run of each path first
            first_prediction_jpw(f"http://127.0.0.1:{jpw_port}", model, Path(tmp) / "warm-up")
            first_prediction_float32(f"http://127.0.0.1:{static_port}", model)
            print("| link | process | .jpw s | float32 safetensors s | ratio | .jpw download s | ready after it s |")
            print("|---|---|---:|---:|---:|---:|---:|")
            rows = []
            for mbit in links:
                rate = mbit * 1e6 / 8
                jpw_url = f"http://127.0.0.1:{ThrottledProxy(jpw_port, rate).port}"
                f32_url = f"http://127.0.0.1:{ThrottledProxy(static_port, rate).port}"
                for process in ("warm", "cold"):
                    jpw, f32 = [], []
                    for i in range(args.repeat):
                        cache = Path(tmp) / f"{process}-{mbit}-{i}"
                        jpw.append(
                            first_prediction_jpw(jpw_url, model, cache)
                            if process == "warm"
                            else cold("jpw", jpw_url, cache, model)
                        )
                        f32.append(
                            first_prediction_float32(f32_url, model)
                            if process == "warm"
                            else cold("f32", f32_url, cache, model)
                        )
                    a, b = medians(jpw), medians(f32)
                    row = {
                        "link_mbit": mbit,
                        "process": process,
                        "jpw_s": a["total"],
                        "float32_s": b["total"],
                        "ratio": b["total"] / a["total"],
                        "download_s": a["download"],
                        "after_last_byte_s": a["after_last_byte"],
                    }
                    rows.append(row)
                    print(
                        f"| {mbit:g} Mbit/s | {process} | {a['total']:.3f} | {b['total']:.3f} | {row['ratio']:.1f}x "
                        f"| {a['download']:.3f} | {a['after_last_byte']:.3f} |",
                        flush=True,
                    )
            if args.out:
                report = {"model": model, "jpw_bytes": sizes[0], "float32_bytes": sizes[1], "repeat": args.repeat}
                args.out.write_text(json.dumps({**report, "rows": rows}, indent=1) + "\n")
        finally:
            for s in servers:
                s.terminate()
                s.wait(10)


if __name__ == "__main__":
    main()
