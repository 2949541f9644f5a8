"""What the web page's gallery costs the server, per model of the store: the tensor listing at
the stored quality (first call: decode the package and read the float weights; then cached),
one page of pictures (original, coded, difference) of the largest tensor, and their PNG bytes.
Medians of --repeat runs, each on a fresh app (so "first" is a first).

    .venv/bin/python benchmarks/page.py [--model-dir models] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

from jpegweights.service import Settings, create_app
from jpegweights.service import gallery


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, default=Path("models"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    runs: dict[str, list[tuple[float, float, float, int]]] = {}
    for _ in range(args.repeat):
        for cached in (gallery.summary, gallery.tensors, gallery.pair):
            cached.cache_clear()
        settings = Settings(model_dir=args.model_dir, cache_dir=Path(tempfile.mkdtemp()), log_requests=False)
        with TestClient(create_app(settings)) as c:
            for m in c.get("/models").json()["models"]:
                base = f"/models/{m['name']}/tensors"
                listing, first = timed(lambda: c.get(base).json())
                _, again = timed(lambda: c.get(base).json())
                largest = max(listing["tensors"], key=lambda t: t["bytes"])
                url = f"{base}/{largest['name']}.png"
                pictures, seconds = timed(
                    lambda: [c.get(url, params={"kind": k}) for k in ("original", "coded", "difference")]
                )
                assert all(r.status_code == 200 for r in pictures)
                runs.setdefault(f"{m['name']} ({largest['name']}, {largest['view']['layout']})", []).append(
                    (first, again, seconds, sum(len(r.content) for r in pictures))
                )
    print(f"{'model (largest tensor)':<62} {'listing first':>13} {'cached':>8} {'3 pictures':>11} {'PNG bytes':>10}")
    for name, rows in runs.items():
        first, again, pics, size = (statistics.median(col) for col in zip(*rows))
        print(f"{name:<62} {first * 1e3:>10.0f} ms {again * 1e3:>5.1f} ms {pics * 1e3:>8.0f} ms {int(size):>10,}")


if __name__ == "__main__":
    main()
