"""Cheap requests that used to take a server away from everyone, each run against a real server
(the MNIST MLP and all-MiniLM-L6-v2) while another client measures MNIST /predict and /healthz,
against the same measurement with no attack in the same run.

    python benchmarks/fairness.py [--seconds 15] [--attack NAME ...]

Needs `make pretrained` (MiniLM). Prints, per attack, what the attacker got (status counts) and
the victim's latencies, p50 and p99, beside the targets: MNIST /predict p99 under 1 s, /healthz
p99 under 100 ms. Exit 1 if a target is missed or an attack request got a 5xx other than the
encode queue's 503.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEXT_MODEL, DIGITS = "all-minilm-l6-v2", "mnist-mlp"
WORDS = "the quick brown fox jumps over the lazy dog while a cat sleeps " * 25  # 300 words
TARGET_PREDICT_S, TARGET_HEALTHZ_S = 1.0, 0.1


def empty_scans_jpeg(side: int, extra_scans: int, progressive: bool = True) -> bytes:
    """A flat JPEG whose last scan header is repeated ``extra_scans`` times with no data: in a
    progressive one, each empty scan is one more pass over every block of the image."""
    buf = io.BytesIO()
    Image.new("L", (side, side), 128).save(buf, "JPEG", progressive=progressive, quality=90)
    data = buf.getvalue()
    last = data.rindex(b"\xff\xda")
    header = data[last : last + 2 + int.from_bytes(data[last + 2 : last + 4], "big")]
    return data[:-2] + header * extra_scans + data[-2:]


def flat_webp(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), 128).save(buf, "WEBP", lossless=True)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


Attack = Callable[[httpx.AsyncClient, Counter], Awaitable[None]]


def posting(body: dict, path: str = "/predict") -> Attack:
    async def attack(client: httpx.AsyncClient, tally: Counter) -> None:
        try:
            tally[(await client.post(path, json=body, timeout=120)).status_code] += 1
        except httpx.TimeoutException:
            tally["timeout"] += 1

    return attack


def abandoned_qualities(model: str, qualities: range, after_s: float) -> Attack:
    """``/weights`` at many qualities, each request given up after ``after_s`` (a client that leaves)."""
    state = {"next": 0}

    async def attack(client: httpx.AsyncClient, tally: Counter) -> None:
        q = qualities[state["next"] % len(qualities)]
        state["next"] += 1
        try:
            r = await client.get("/weights", params={"model": model, "quality": q}, timeout=after_s)
            tally[r.status_code] += 1
        except httpx.TimeoutException:
            tally["abandoned"] += 1

    return attack


def attacks() -> dict[str, tuple[int, Attack]]:
    """name -> (concurrent attackers, one attack request)."""
    return {
        "1,024 texts of 300 words to MiniLM": (2, posting({"model": TEXT_MODEL, "text": [WORDS] * 1024})),
        "128 texts of 300 words (the token budget)": (2, posting({"model": TEXT_MODEL, "text": [WORDS] * 128})),
        "512 pairs of 300 words": (2, posting({"model": TEXT_MODEL, "pairs": [[WORDS, WORDS]] * 512})),
        "a progressive JPEG of 70,000 empty scans (713 KB)": (
            6,
            posting({"model": DIGITS, "images": [b64(empty_scans_jpeg(1024, 70_000))]}),
        ),
        "1,024 flat 4096x4096 WebPs": (2, posting({"model": DIGITS, "images": [b64(flat_webp(4096))] * 1024})),
        "40 MiniLM qualities, each abandoned after 1 s": (4, abandoned_qualities(TEXT_MODEL, range(11, 51), 1.0)),
    }


async def measure(url: str, seconds: float, attackers: int, attack: Attack | None) -> dict:
    digit = {"model": DIGITS, "inputs": [[0] * 784]}
    predict_s: list[float] = []
    healthz_s: list[float] = []
    tally: Counter = Counter()
    failures: Counter = Counter()
    stop = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=attackers + 4)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def victim() -> None:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                r = await client.post("/predict", json=digit)
                predict_s.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    failures[f"predict {r.status_code}"] += 1

        async def prober() -> None:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                r = await client.get("/healthz")
                healthz_s.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    failures[f"healthz {r.status_code}"] += 1
                await asyncio.sleep(0.02)

        async def attacker() -> None:
            while time.monotonic() < stop:
                await attack(client, tally)

        tasks = [victim(), prober()] + ([attacker() for _ in range(attackers)] if attack else [])
        await asyncio.gather(*tasks)
    return {"predict": predict_s, "healthz": healthz_s, "attack": tally, "failures": failures}


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def run(seconds: float, only: list[str]) -> int:
    from tests.conftest import server_process

    chosen = {k: v for k, v in attacks().items() if not only or any(o.lower() in k.lower() for o in only)}
    missing = [m for m in (DIGITS, TEXT_MODEL) if not (ROOT / "models" / m / "model.jpw").is_file()]
    if missing:
        print(f"models not imported: {', '.join(missing)} (run `make pretrained`)", file=sys.stderr)
        return 2
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "models"
        store.mkdir()
        for name in (DIGITS, TEXT_MODEL):
            shutil.copytree(ROOT / "models" / name, store / name)
        with server_process(Path(tmp) / "cache", env={"JPEGWEIGHTS_DEFAULT_MODEL": DIGITS}, model_dir=store) as (
            url,
            _,
        ):
            print(f"{seconds:.0f} s each; victim: 1 client posting one MNIST digit, /healthz every 20 ms")
            print(f"{'attack':<50} {'attacker got':<34} {'predict p50/p99 ms':>20} {'healthz p99 ms':>15}")
            for name, (attackers, attack) in {"none (reference)": (0, None), **chosen}.items():
                m = asyncio.run(measure(url, seconds, attackers, attack))
                got = ", ".join(f"{n}x {k}" for k, n in sorted(m["attack"].items(), key=str)) or "-"
                pp, hp = p(m["predict"], 99), p(m["healthz"], 99)
                print(
                    f"{name:<50} {got:<34} {1000 * p(m['predict'], 50):>9.1f}/{1000 * pp:<10.1f}"
                    f"{1000 * hp:>15.1f}" + (f"  failures: {dict(m['failures'])}" if m["failures"] else "")
                )
                server_errors = [k for k in m["attack"] if isinstance(k, int) and k >= 500 and k != 503]
                ok &= pp < TARGET_PREDICT_S and hp < TARGET_HEALTHZ_S and not m["failures"] and not server_errors
    print(f"targets: predict p99 < {TARGET_PREDICT_S * 1000:.0f} ms, healthz p99 < {TARGET_HEALTHZ_S * 1000:.0f} ms")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--attack", nargs="*", default=[], help="run only attacks whose name contains one of these")
    args = parser.parse_args()
    return run(args.seconds, args.attack)


if __name__ == "__main__":
    sys.exit(main())
