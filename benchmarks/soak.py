"""Soak test: 64 clients for a while against a real server, mixing good requests, bad requests
and model replacements, with a /healthz poller and clients that send 4096x4096 PNGs.

    python benchmarks/soak.py [--seconds 600] [--clients 64] [--max-rss-growth-mib 200]

Fails (exit 1) if any good request does not get its 200 (a 5xx, a reset connection, a
timeout), if any bad request gets a 5xx, or if the server's RSS grows by more than the bound
between the end of the 15 s warm-up and the end, each read 2 s after the load stops. Prints
counts, /healthz latency percentiles and RSS. `make test` runs 60 s of it (tests/e2e/test_soak.py).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ADMIN = {"Authorization": "Bearer soak-admin"}
GOOD_INPUT = {"inputs": [[0] * 784]}


def bad_requests() -> list[tuple[str, str, bytes]]:
    """(method, path, body) that must each get a 4xx."""
    v2 = "/v2/models/mnist-mlp/infer"
    return [
        ("POST", "/predict", b"not json"),
        ("POST", "/predict", b"[" * 10000 + b"]" * 10000),
        ("POST", "/predict", b'{"inputs": [[' + b"9" * 400 + b"]]}"),
        ("POST", "/predict", b'{"inputs": [[1, 2, 3]]}'),
        ("POST", "/predict", b'{"inputs": [[999] * 784]}'),
        ("POST", "/predict", b'{"images": ["%%%not base64"]}'),
        ("POST", "/predict", b'{"model": "nope", "inputs": [[0]]}'),
        ("POST", v2, b'{"inputs": [{"name": "x", "shape": [true, 784], "datatype": "FP32", "data": []}]}'),
        ("POST", v2, b'{"inputs": [{"name": "x", "shape": [1, 784], "datatype": [], "data": []}]}'),
        ("PUT", "/models/mnist-mlp", b"\x00" * 1000),
        ("GET", "/weights?model=../../etc&quality=20", b""),
        ("GET", "/models/nope", b""),
    ]


def big_png(side: int = 4096) -> bytes:
    """A 4096x4096 photo-like PNG (a gradient with a little noise): 16.7 Mpixels to decode and
    resize, in a body under the 8 MiB request limit."""
    rng = np.random.default_rng(0)
    ramp = np.add.outer(np.arange(side), np.arange(side)) * (255 / (2 * side))
    pixels = (ramp + rng.integers(0, 4, (side, side))).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Tally:
    good: int = 0
    good_failed: list[str] = field(default_factory=list)
    bad: int = 0
    bad_5xx: list[str] = field(default_factory=list)
    replacements: int = 0
    replace_failed: list[str] = field(default_factory=list)
    big_images: int = 0
    healthz_ms: list[float] = field(default_factory=list)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(url: str, seconds: float, clients: int, tally: Tally, png: bytes) -> None:
    bads = bad_requests()
    packages = [(ROOT / "models" / m / "model.jpw").read_bytes() for m in ("mnist-cnn", "mnist-mlp")]
    big_body = ('{"model": "mnist-mlp", "images": ["' + base64.b64encode(png).decode() + '"]}').encode()
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, headers=ADMIN, limits=limits, timeout=60) as h:

        async def worker(i: int) -> None:
            rng = random.Random(i)
            while time.monotonic() < deadline:
                if rng.random() < 0.7:
                    try:
                        r = await h.post("/predict", json=GOOD_INPUT)
                        if r.status_code != 200:
                            tally.good_failed.append(f"{r.status_code} {r.text[:100]}")
                    except httpx.HTTPError as exc:
                        tally.good_failed.append(f"{type(exc).__name__}: {exc}")
                    tally.good += 1
                else:
                    method, path, body = rng.choice(bads)
                    try:
                        r = await h.request(method, path, content=body, headers={"content-type": "application/json"})
                        if r.status_code >= 500 or r.status_code < 400:
                            tally.bad_5xx.append(f"{method} {path[:40]} -> {r.status_code}")
                    except httpx.HTTPError as exc:
                        tally.bad_5xx.append(f"{method} {path[:40]} -> {type(exc).__name__}")
                    tally.bad += 1

        async def replacer() -> None:
            n = 0
            while time.monotonic() < deadline:
                await asyncio.sleep(2)
                r = await h.put("/models/mnist-mlp", content=packages[n % 2])
                if r.status_code != 200:
                    tally.replace_failed.append(f"{r.status_code} {r.text[:100]}")
                tally.replacements += 1
                n += 1

        async def big_images() -> None:
            while time.monotonic() < deadline:
                r = await h.post("/predict", content=big_body, headers={"content-type": "application/json"})
                if r.status_code != 200:
                    tally.good_failed.append(f"big image: {r.status_code} {r.text[:100]}")
                tally.big_images += 1

        async def healthz() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=10) as probe:  # its own connection
                while time.monotonic() < deadline:
                    t0 = time.perf_counter()
                    await probe.get("/healthz")
                    tally.healthz_ms.append((time.perf_counter() - t0) * 1e3)
                    await asyncio.sleep(0.05)

        await asyncio.gather(*[worker(i) for i in range(clients)], replacer(), big_images(), healthz())


def idle_rss_mib(pid: int, pause: float = 2.0) -> float:
    """The server's RSS once the requests in flight are done: a snapshot under load counts the
    buffers of whichever 4096x4096 images happen to be decoding (+90 and +223 MiB in two runs)."""
    time.sleep(pause)
    return rss_mib(pid)


def run(
    seconds: float = 600, clients: int = 64, max_rss_growth_mib: float = 200, warmup: float = 15
) -> tuple[bool, str]:
    from tests.conftest import MNIST_STORE, server_process

    png = big_png()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "models"
        shutil.copytree(MNIST_STORE, store)  # the MNIST models (symlinked folders copied as folders)
        env = {"JPEGWEIGHTS_ADMIN_TOKEN": "soak-admin", "JPEGWEIGHTS_REQUEST_TIMEOUT_S": "30"}
        with server_process(Path(tmp) / "cache", "--model-dir", str(store), env=env) as (url, proc):
            pid = proc.pid
            asyncio.run(load(url, warmup, clients, Tally(), png))
            before = idle_rss_mib(pid)
            tally = Tally()
            t0 = time.monotonic()
            asyncio.run(load(url, seconds, clients, tally, png))
            elapsed = time.monotonic() - t0
            after = idle_rss_mib(pid)
    h = sorted(tally.healthz_ms)
    lines = [
        f"soak: {clients} clients, {elapsed:.0f} s",
        f"  good requests:   {tally.good:,} ({tally.good / elapsed:,.0f}/s), failed {len(tally.good_failed)}",
        f"  bad requests:    {tally.bad:,}, answered 5xx or not 4xx: {len(tally.bad_5xx)}",
        f"  replacements:    {tally.replacements}, failed {len(tally.replace_failed)}",
        f"  4096x4096 PNGs:  {tally.big_images}",
        (
            f"  /healthz:        {len(h)} probes, p50 {statistics.median(h):.1f} ms, p99 "
            f"{h[int(len(h) * 0.99) - 1]:.1f} ms, max {h[-1]:.1f} ms"
        ),
        (
            f"  server RSS:      {before:.0f} MiB after warm-up, {after:.0f} MiB at the end (growth "
            f"{after - before:+.0f} MiB, bound {max_rss_growth_mib:g})"
        ),
    ]
    for title, items in (
        ("GOOD FAILED", tally.good_failed),
        ("BAD 5XX", tally.bad_5xx),
        ("REPLACE FAILED", tally.replace_failed),
    ):
        lines += [f"  {title}: {item}" for item in items[:10]]
    ok = not (tally.good_failed or tally.bad_5xx or tally.replace_failed) and after - before <= max_rss_growth_mib
    return ok, "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=600)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--max-rss-growth-mib", type=float, default=200)
    args = p.parse_args()
    ok, report = run(args.seconds, args.clients, args.max_rss_growth_mib)
    print(report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
