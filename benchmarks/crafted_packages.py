"""What a crafted package costs before it is refused or loaded: wall time and peak memory, against
the target that every one is refused, or loaded, within 2 s and 256 MB.

    python benchmarks/crafted_packages.py [--case NAME ...] [--via store client upload]
                                          [--timeout 60] [--max-gib 6] [--json PATH]

Each package is loaded in a fresh process by two paths: ``store`` (``service.store.load_model``
on a model folder, what a folder in the store and an admin's upload of a ``.jpw`` go through) and
``client`` (``Client.load`` from a hostile server, an ``httpx.MockTransport`` serving the bytes).
The process first imports what a serving process has (torch, transformers, the service, the
client) and loads the bundled MNIST MLP by the same path; then its peak RSS is reset
(``/proc/self/clear_refs``) and only the crafted load is measured: its wall time and its peak RSS
above the RSS just before it. Each process is capped by ``--timeout`` and by an address-space
limit of ``--max-gib`` above what it had mapped after its imports.

The ``upload`` cases stream a whole body to ``PUT /models/{name}`` of a real server (started as
the tests start one, with an admin token) and measure the server's peak RSS above its RSS before
the request, and the time until its answer. Exit 1 if a case misses the target.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fairness import empty_scans_jpeg  # noqa: E402

from tests.service.test_upload_stream import read_answer, safetensors_header  # noqa: E402

TARGET_S, TARGET_MB = 2.0, 256.0
WARM_UP = ROOT / "models" / "mnist-mlp" / "model.jpw"
ADMIN = "crafted-admin"
ANSWER_CAP_S = 120  # a server that waits for a whole upload before judging it answers within this


# ---------------------------------------------------------------- the crafted packages


def ten_million_layers() -> bytes:
    """The tiny BERT of the handlers' tests, its config saying 10 M hidden layers."""
    from jpegweights.codec import EncodeConfig, encode
    from tests.handlers.tiny_text import tiny_text

    manifest, state = tiny_text(num_hidden_layers=10_000_000)
    return encode(state, EncodeConfig(quality=90), manifest["architecture"], manifest["handler"])


def million_relus() -> bytes:
    """A sequential architecture of 1 M ReLUs (16 MB of JSON, deflated in the packed container)."""
    from jpegweights.codec import encode

    layers = [{"type": "ReLU"}] * 1_000_000
    return encode({}, architecture={"input_shape": [4], "layers": layers}, handler={"name": "raw"})


def huge_raw_input() -> bytes:
    """A raw handler declaring a 4096x4096 input in front of a Flatten."""
    from jpegweights.codec import encode

    architecture = {"input_shape": [4], "layers": [{"type": "Flatten"}]}
    return encode({}, architecture=architecture, handler={"name": "raw", "config": {"input_shape": [4096, 4096]}})


def huge_activation() -> bytes:
    """A 5x5 convolution with a padding of 930: a 28x28 input becomes 6 x 1888 x 1888 values."""
    import torch

    from jpegweights.codec import encode

    conv = {"type": "Conv2d", "in_channels": 1, "out_channels": 6, "kernel_size": 5, "padding": 930}
    architecture = {"input_shape": [1, 28, 28], "layers": [conv, {"type": "Flatten"}]}
    state = {"0.weight": torch.randn(6, 1, 5, 5), "0.bias": torch.zeros(6)}
    return encode(state, architecture=architecture, handler={"name": "raw"})


def activation_at_the_limit() -> bytes:
    """A 1x1 convolution padded by 498: a 28x28 input becomes 1024 x 1024 values, the most one
    layer may output per sample (``sequential.MAX_ACTIVATION_VALUES``)."""
    import torch

    from jpegweights.codec import encode

    conv = {"type": "Conv2d", "in_channels": 1, "out_channels": 1, "kernel_size": 1, "padding": 498}
    architecture = {"input_shape": [1, 28, 28], "layers": [conv, {"type": "Flatten"}]}
    state = {"0.weight": torch.ones(1, 1, 1, 1), "0.bias": torch.zeros(1)}
    return encode(state, architecture=architecture, handler={"name": "raw"})


def linear_package(side: int, stream: bytes) -> bytes:
    """A bias-free Linear(side, side) whose weight is one JPEG-coded matrix atlas holding ``stream``
    (a grey ``side`` x ``side`` JPEG), with one range shared by every row."""
    import torch

    from jpegweights.codec import EncodeConfig, encode
    from tests.codec.helpers import rewrite

    linear = {"type": "Linear", "in_features": side, "out_features": side, "bias": False}
    config = EncodeConfig(coding_for={"0.weight": "jpeg"}, layout_for={"0.weight": "matrix"}, compact=False)
    small = encode(
        {"0.weight": torch.randn(64, 64)},
        config,
        architecture={"input_shape": [side], "layers": [linear]},
        handler={"name": "raw"},
    )

    def manifest(m: dict) -> None:
        m["tensors"]["0.weight"]["shape"] = [side, side]
        m["tensors"]["0.weight"]["atlases"][0].update(height=side, width=side)

    def tensors(s: dict) -> None:
        s["0.weight/jpeg/0"] = torch.frombuffer(bytearray(stream), dtype=torch.uint8)
        s["0.weight/scale"] = torch.tensor([1 / 255], dtype=torch.float16)  # (1,): one range for all rows
        s["0.weight/offset"] = torch.tensor([-0.5], dtype=torch.float16)

    return rewrite(small, manifest, tensors)


def flat_linear() -> bytes:
    """A 16384x16384 Linear coded as one flat grey JPEG (1 GiB of float32 once decoded)."""
    import numpy as np

    from jpegweights.codec import jpeg

    side = 16384
    stream = jpeg.encode(np.full((side, side), 128, dtype=np.uint8), jpeg.qtable("flat", 90))
    return linear_package(side, stream)


def progressive_scans() -> bytes:
    """A 1024x1024 Linear whose atlas is a progressive JPEG of 70,000 empty scans."""
    return linear_package(1024, empty_scans_jpeg(1024, 70_000))


def baseline_scans() -> bytes:
    """The same with a baseline JPEG (the frame type the codec takes) and 70,000 empty scans."""
    return linear_package(1024, empty_scans_jpeg(1024, 70_000, progressive=False))


PACKAGES: dict[str, Callable[[], bytes]] = {
    "transformers config of 10 M layers": ten_million_layers,
    "sequential chain of 1 M ReLUs": million_relus,
    "raw handler, 4096x4096 input": huge_raw_input,
    "convolution padded by 930": huge_activation,
    "convolution padded to the activation limit": activation_at_the_limit,
    "flat JPEG, 16384x16384 Linear": flat_linear,
    "progressive JPEG, 70,000 empty scans": progressive_scans,
    "baseline JPEG, 70,000 empty scans": baseline_scans,
}


# ---------------------------------------------------------------- one load, in its own process


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := current RSS


def outcome_of(exc: BaseException, scratch: str) -> tuple[str, str]:
    """(outcome, the first 100 characters of the message, the scratch folder's path left out)."""
    message = str(exc).replace(scratch + "/", "")
    if isinstance(exc, MemoryError) or "can't allocate memory" in message or "out of memory" in message.lower():
        return "MemoryError", f"{type(exc).__name__}: {message}"[:100]
    return type(exc).__name__, message[:100]


def child(via: str, path: Path, max_gib: float) -> dict:
    """Load ``path`` by ``via`` once (after a warm-up load of the MNIST MLP) and measure it."""
    import httpx
    import simplejpeg  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from jpegweights.client import Client
    from jpegweights.service.store import LoadOptions, load_model

    cache = Path(tempfile.mkdtemp(prefix="crafted-client-"))

    def via_store(package: Path) -> None:
        folder = Path(tempfile.mkdtemp(prefix="crafted-store-", dir=cache)) / "crafted"
        folder.mkdir()
        shutil.copyfile(package, folder / "model.jpw")
        load_model(folder, LoadOptions())

    def via_client(package: Path) -> None:
        data = package.read_bytes()
        etag = '"sha256-' + hashlib.sha256(data).hexdigest() + '"'
        transport = httpx.MockTransport(lambda request: httpx.Response(200, headers={"etag": etag}, content=data))
        with Client("http://crafted", transport=transport, cache_dir=cache / package.stem, retries=0) as c:
            c.load("crafted")

    load = via_store if via == "store" else via_client
    try:
        if WARM_UP.is_file():
            load(WARM_UP)
        reset_peak()
        before = status_kib("VmRSS")
        mapped = status_kib("VmSize") * 1024
        limit = mapped + int(max_gib * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
        t0 = time.perf_counter()
        try:
            load(path)
            outcome, message = "loaded", ""
        except BaseException as exc:  # what it raised is the measurement
            outcome, message = outcome_of(exc, str(cache))
        seconds = time.perf_counter() - t0
        peak_mb = (status_kib("VmHWM") - before) / 1024
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {"outcome": outcome, "message": message, "seconds": seconds, "peak_mb": peak_mb}


def load_in_process(via: str, path: Path, timeout: float, max_gib: float) -> dict:
    cmd = [sys.executable, __file__, "--child", via, str(path), "--max-gib", str(max_gib)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"outcome": "timeout", "message": f"no answer within {timeout:.0f} s", "seconds": None, "peak_mb": None}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        why = f"signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
        tail = done.stderr.strip().splitlines()[-1:] or [""]
        return {
            "outcome": "died",
            "message": f"{why}: {tail[0]}"[:100],
            "seconds": None,
            "peak_mb": None,
        }
    return json.loads(lines[-1])


# ---------------------------------------------------------------- uploads to a real server


def misfit_float16() -> tuple[bytes, int]:
    """512 MiB of float16 safetensors whose architecture (an MNIST Linear) has no tensor 'w'."""
    size = 2 * 16384 * 16384
    architecture = {
        "input_shape": [1, 28, 28],
        "layers": [{"type": "Flatten"}, {"type": "Linear", "in_features": 784, "out_features": 10}],
    }
    head = safetensors_header(
        {"w": {"dtype": "F16", "shape": [16384, 16384], "data_offsets": [0, size]}},
        {"architecture": json.dumps(architecture)},
    )
    return head, len(head) + size


def gib_bad_header() -> tuple[bytes, int]:
    """1 GiB (the upload limit) whose first 8 bytes declare a header of 1 TiB."""
    return struct.pack("<Q", 1 << 40), 1 << 30


UPLOADS: dict[str, Callable[[], tuple[bytes, int]]] = {
    "upload: 512 MiB float16, misfit": misfit_float16,
    "upload: 1 GiB, bad 8-byte header": gib_bad_header,
}


def pid_status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class ServerPeak:
    """A server's peak RSS across a request: VmHWM reset through its clear_refs where this process
    may write it, else VmRSS sampled every 2 ms."""

    def __init__(self, pid: int) -> None:
        self.pid, self.sampled, self.stop = pid, 0, threading.Event()
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
            self.exact = True
        except OSError:
            self.exact = False
        self.before = pid_status_kib(pid, "VmRSS")
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.stop.is_set():
            self.sampled = max(self.sampled, pid_status_kib(self.pid, "VmRSS"))
            time.sleep(0.002)

    def growth_mb(self) -> float:
        self.stop.set()
        self.thread.join()
        peak = max(self.sampled, pid_status_kib(self.pid, "VmHWM") if self.exact else 0)
        return max(0, peak - self.before) / 1024


def put(url: str, name: str, head: bytes, total: int) -> tuple[int, str, int]:
    """PUT ``total`` bytes (``head``, then zeros) as fast as the server reads them; return its
    status, its detail and how many bytes had been sent when the answer was complete."""
    parts = urlsplit(url)
    sent, stop = [0], threading.Event()
    with socket.create_connection((parts.hostname, parts.port), timeout=ANSWER_CAP_S) as s:
        s.sendall(
            f"PUT /models/{name} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {total}\r\n\r\n".encode()
        )

        def send() -> None:
            chunk = bytes(1 << 20)
            try:
                s.sendall(head)
                sent[0] = len(head)
                while sent[0] < total and not stop.is_set():
                    n = min(len(chunk), total - sent[0])
                    s.sendall(chunk[:n])
                    sent[0] += n
            except OSError:  # the server answered and closed: the rest is not wanted
                pass

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        answer = read_answer(s)
        at_answer = sent[0]
        stop.set()
        s.shutdown(socket.SHUT_RDWR)
    sender.join()
    head_part, _, body = answer.partition(b"\r\n\r\n")
    try:
        detail = str(json.loads(body).get("detail", ""))
    except ValueError:
        detail = body[:100].decode(errors="replace")
    return int(head_part.split()[1]) if head_part else 0, detail, at_answer


def upload_case(name: str, make: Callable[[], tuple[bytes, int]]) -> dict:
    """One upload to a fresh server (its own process, so its peak is this upload's)."""
    from tests.conftest import MNIST_STORE, server_process

    head, total = make()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "models"
        store.mkdir()
        shutil.copytree(MNIST_STORE / "mnist-mlp", store / "mnist-mlp")
        env = {"JPEGWEIGHTS_ADMIN_TOKEN": ADMIN}
        with server_process(Path(tmp) / "cache", env=env, model_dir=store) as (url, proc):
            peak = ServerPeak(proc.pid)
            t0 = time.perf_counter()
            status, detail, at_answer = put(url, "crafted", head, total)
            seconds = time.perf_counter() - t0
            time.sleep(0.5)  # anything the server does after answering still counts
            growth = peak.growth_mb()
    return {
        "bytes": total,
        "outcome": "loaded" if status == 200 else f"HTTP {status}",
        "message": detail.removeprefix("package refused, nothing replaced: ")[:100],
        "seconds": seconds,
        "peak_mb": growth,
        "sent_at_answer": at_answer,
    }


# ---------------------------------------------------------------- the table


def within(r: dict) -> bool:
    measured = r["seconds"] is not None and r["peak_mb"] is not None
    return (
        r["outcome"] not in ("timeout", "died", "MemoryError")
        and measured
        and (r["seconds"] <= TARGET_S and r["peak_mb"] <= TARGET_MB)
    )


def run(only: list[str], vias: list[str], timeout: float, max_gib: float) -> list[dict]:
    def chosen(name: str) -> bool:
        return not only or any(o.lower() in name.lower() for o in only)

    results = []
    print(f"{'case':<38} {'via':<7} {'bytes':>13} {'outcome':<20} {'seconds':>8} {'peak MB':>9}  target")
    with tempfile.TemporaryDirectory(prefix="crafted-") as tmp:
        for name, make in PACKAGES.items():
            if not chosen(name) or not set(vias) & {"store", "client"}:
                continue
            path = Path(tmp) / (name.split(",")[0].replace(" ", "-") + ".jpw")
            path.write_bytes(make())
            for via in (v for v in ("store", "client") if v in vias):
                r = {"case": name, "via": via, "bytes": path.stat().st_size}
                r |= load_in_process(via, path, timeout, max_gib)
                results.append(report(r))
            path.unlink()
    if "upload" in vias:
        for name, make in UPLOADS.items():
            if chosen(name):
                results.append(report({"case": name, "via": "upload", **upload_case(name, make)}))
    print(f"target: refused or loaded within {TARGET_S:.0f} s and {TARGET_MB:.0f} MB above the process's RSS before")
    print("what each raised:")
    for r in results:
        if r["message"]:
            sent = f" ({r['sent_at_answer'] / (1 << 20):.1f} MiB sent by then)" if "sent_at_answer" in r else ""
            print(f"  {r['case']} ({r['via']}): {r['message']}{sent}")
    return results


def report(r: dict) -> dict:
    r["within_target"] = within(r)
    seconds = "-" if r["seconds"] is None else f"{r['seconds']:.3f}"
    peak = "-" if r["peak_mb"] is None else f"{r['peak_mb']:.1f}"
    print(
        f"{r['case']:<38} {r['via']:<7} {r['bytes']:>13,} {r['outcome']:<20} {seconds:>8} {peak:>9}  "
        f"{'yes' if r['within_target'] else 'no'}",
        flush=True,
    )
    return r


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", nargs="*", default=[], help="run only cases whose name contains one of these")
    vias = ["store", "client", "upload"]
    parser.add_argument("--via", nargs="*", default=vias, choices=vias, help="which paths load the packages")
    parser.add_argument("--timeout", type=float, default=60, help="seconds each load may take")
    parser.add_argument("--max-gib", type=float, default=6, help="address space each load may add")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", nargs=2, metavar=("VIA", "PACKAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), args.max_gib)))
        return 0
    results = run(args.case, args.via, args.timeout, args.max_gib)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0 if all(r["within_target"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
