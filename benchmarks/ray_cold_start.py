"""Replica cold start on Ray Serve when each replica fetches its weights over the network: the
compact ``.jpw`` package against float32 weights, on a link limited to 1 Gbit/s.

    .venv/bin/python benchmarks/ray_cold_start.py --model all-minilm-l6-v2 --runs 5 \
        --out docs/results/ray_cold_start.json   # as root; docs/deploy.md shows it

The link is a veth pair between this network namespace and a new one, each end shaped by ``tc
tbf``. In the new namespace two ``jpegweights serve`` are the model sources: one serves the
model's package as stored (compact), the other the same weights with every tensor coded raw
float32 (a safetensors file the size of ``model.safetensors``), so both replicas run the same
code and differ only in what crosses the link and what they decode. Per run and form, alternating
forms: a fresh work dir (nothing cached), then

- fetch: ``deploy.source.prepare_store`` in this process (transfer, SHA-256 check);
- cold start: a one-replica ``jpegweights.deploy.ray`` app deployed until Ray's proxy answers
  ``/readyz`` with the model loaded (Ray starts the replica, which fetches and loads the model),
  then ``serve.delete``.

Prints the medians and the float32/compact ratios, measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from safetensors.torch import load_file

from jpegweights import codec
from jpegweights.codec import EncodeConfig
from jpegweights.deploy.source import prepare_store

ROOT = Path(__file__).resolve().parents[1]
HOST_IP, SOURCE_IP = "10.77.0.1", "10.77.0.2"


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True)


@contextlib.contextmanager
def shaped_link(rate: str) -> Iterator[str]:
    """A network namespace reached over a veth pair whose both ends send at most ``rate``."""
    ns, host_end, ns_end = f"jwbench{os.getpid()}", f"jwb{os.getpid()}a", f"jwb{os.getpid()}b"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        sh("ip", "link", "set", ns_end, "netns", ns)
        sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", host_end)
        sh("ip", "link", "set", host_end, "up")
        for cmd in (
            ("addr", "add", f"{SOURCE_IP}/24", "dev", ns_end),
            ("link", "set", ns_end, "up"),
            ("link", "set", "lo", "up"),
        ):
            sh("ip", "netns", "exec", ns, "ip", *cmd)
        # burst above the 64 KiB segments the veth hands over (GSO), or tbf would drop them all
        tbf = ("root", "tbf", "rate", rate, "burst", "256kb", "latency", "50ms")
        sh("tc", "qdisc", "add", "dev", host_end, *tbf)
        sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", ns_end, *tbf)
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", host_end], stderr=subprocess.DEVNULL)
        subprocess.run(["ip", "netns", "del", ns])


@contextlib.contextmanager
def source_server(ns: str, store: Path, port: int, cache: Path) -> Iterator[str]:
    """``jpegweights serve`` of ``store`` inside namespace ``ns``, ready."""
    env = {**os.environ, "JPEGWEIGHTS_CACHE_DIR": str(cache), "JPEGWEIGHTS_LOG_REQUESTS": "false"}
    cmd = [sys.executable, "-m", "jpegweights.cli.main", "serve", "--host", SOURCE_IP, "--port", str(port)]
    log = open(cache.parent / f"source-{port}.log", "wb")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, *cmd, "--model-dir", str(store)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://{SOURCE_IP}:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the source server exited: see {log.name}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def stores(model: str, tmp: Path) -> dict[str, Path]:
    """The two model stores: the package as stored, and its weights coded raw float32."""
    folder = ROOT / "models" / model
    compact = tmp / "compact" / model
    compact.mkdir(parents=True)
    shutil.copyfile(folder / "model.jpw", compact / "model.jpw")
    (compact / "model.json").write_text(f'{{"name": "{model}", "version": "1"}}')
    manifest = codec.load_manifest((folder / "model.jpw").read_bytes())
    extra = {k: manifest[k] for k in ("architecture", "handler") if k in manifest}
    raw = codec.encode(
        load_file(str(folder / "model.safetensors")), EncodeConfig(coding="raw", raw_dtype="same"), **extra
    )
    float32 = tmp / "float32" / model
    float32.mkdir(parents=True)
    (float32 / "model.jpw").write_bytes(raw)
    (float32 / "model.json").write_text(f'{{"name": "{model}", "version": "1"}}')
    return {"compact": compact.parent, "float32": float32.parent}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cold_start(serve, app, url: str, model: str, work: Path, proxy: str) -> tuple[float, float]:
    """Seconds from deploying a one-replica app until Ray's proxy answers /readyz with the model
    loaded (polled every 10 ms: ``serve.run``'s own wait polls once a second), and the seconds
    the replica spent decoding the package (its /models ``decode_ms``)."""
    target = app({"source": url, "models": [model], "num_replicas": 1, "work_dir": str(work)})
    t0 = time.perf_counter()
    serve.run_many(
        [serve.RunTarget(target, name="cold", route_prefix="/")],
        wait_for_ingress_deployment_creation=False,
        wait_for_applications_running=False,
    )
    with httpx.Client(base_url=proxy, timeout=30) as c:
        while True:
            with contextlib.suppress(httpx.TransportError):
                r = c.get("/readyz")
                if r.status_code == 200 and r.json().get("models") == [model]:
                    break
            time.sleep(0.01)
        seconds = time.perf_counter() - t0
        decode = c.get("/models").json()["models"][0]["decode_ms"] / 1e3
    serve.delete("cold")
    return seconds, decode


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="all-minilm-l6-v2", help="a model of ./models with its model.safetensors")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--rate", default="1gbit", help="tc's rate for each direction of the link")
    p.add_argument("--out", type=Path, help="also write the medians here as JSON (benchmarks/figures.py renders it)")
    args = p.parse_args()
    import ray
    from ray import serve

    from jpegweights.deploy.ray import app

    tmp = Path(tempfile.mkdtemp(prefix="jw-cold-"))
    fetch: dict[str, list[float]] = {"compact": [], "float32": []}
    cold: dict[str, list[float]] = {"compact": [], "float32": []}
    decode: dict[str, list[float]] = {"compact": [], "float32": []}
    try:
        paths = stores(args.model, tmp)
        sizes = {form: (path / args.model / "model.jpw").stat().st_size for form, path in paths.items()}
        with shaped_link(args.rate) as ns, contextlib.ExitStack() as servers:
            urls = {
                form: servers.enter_context(source_server(ns, path, 8001 + i, tmp / f"cache-{form}"))
                for i, (form, path) in enumerate(paths.items())
            }
            ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(tmp / "ray"), log_to_driver=False)
            port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            for run in range(args.runs):
                order = ["compact", "float32"] if run % 2 == 0 else ["float32", "compact"]  # drift cancels
                for form in order:
                    t0 = time.perf_counter()
                    prepare_store(urls[form], tmp / f"fetch-{form}-{run}", models=[args.model])
                    fetch[form].append(time.perf_counter() - t0)
                    work = tmp / f"work-{form}-{run}"
                    seconds, decoded = cold_start(serve, app, urls[form], args.model, work, f"http://127.0.0.1:{port}")
                    cold[form].append(seconds)
                    decode[form].append(decoded)
                    print(
                        f"run {run} {form}: fetch {fetch[form][-1]:.2f} s, decode {decoded:.2f} s, "
                        f"cold start {seconds:.2f} s",
                        flush=True,
                    )
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    report(args, sizes, fetch, decode, cold)


def report(args: argparse.Namespace, sizes: dict, fetch: dict, decode: dict, cold: dict) -> None:
    rows = {
        form: {
            "bytes": sizes[form],
            "fetch_s": statistics.median(fetch[form]),
            "decode_s": statistics.median(decode[form]),
            "cold_start_s": statistics.median(cold[form]),
        }
        for form in ("compact", "float32")
    }
    print(f"\n{args.model}, {args.runs} runs, link {args.rate} (tc tbf on a veth pair); medians:")
    print(f"{'form':8} {'MB':>7} {'fetch s':>8} {'MB/s':>6} {'decode s':>9} {'cold start s':>13}")
    for form, r in rows.items():
        mb = r["bytes"] / 1e6
        print(
            f"{form:8} {mb:7.1f} {r['fetch_s']:8.2f} {mb / r['fetch_s']:6.0f} "
            f"{r['decode_s']:9.2f} {r['cold_start_s']:13.2f}"
        )
    c, f = rows["compact"], rows["float32"]
    print(
        f"float32/compact: bytes {f['bytes'] / c['bytes']:.2f}x, fetch {f['fetch_s'] / c['fetch_s']:.2f}x, "
        f"cold start {f['cold_start_s'] / c['cold_start_s']:.2f}x"
    )
    if args.out:
        result = {"model": args.model, "runs": args.runs, "rate": args.rate, "forms": rows}
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
