from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from hypothesis import settings

# Every run, here or in CI, explores the same examples: a test passes or fails for everyone.
# Failures hypothesis found are pinned with @example where they were found.
settings.register_profile("derandomized", derandomize=True, print_blob=True)
settings.load_profile("derandomized")

ROOT = Path(__file__).resolve().parents[1]
# A store of the two MNIST models only (the repository's store also holds the pretrained ones
# `make` imports, which take seconds to load): most tests serve this one.
MNIST_STORE = Path(tempfile.mkdtemp(prefix="jpegweights-mnist-store-"))
for _name in ("mnist-mlp", "mnist-cnn"):
    (MNIST_STORE / _name).symlink_to(ROOT / "models" / _name, target_is_directory=True)
atexit.register(shutil.rmtree, MNIST_STORE, ignore_errors=True)
BUNDLED = ("mnist-mlp", "mnist-cnn", "mobilenet_v2", "all-minilm-l6-v2")  # what `make serve` serves, opt-in ones aside


def bundled_store(folder: Path) -> Path:
    """A store of the bundled models that are imported (symlinks): the repository's own store
    without opt-in models (`make pretrained-large`)."""
    for name in BUNDLED:
        if (ROOT / "models" / name / "model.jpw").is_file():
            (folder / name).symlink_to(ROOT / "models" / name, target_is_directory=True)
    return folder


MNIST_DIR = Path(os.environ.get("JPEGWEIGHTS_MNIST", ROOT.parent / "shared" / "data" / "mnist"))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"MNIST not found at {MNIST_DIR}; set JPEGWEIGHTS_MNIST to its directory")
    return MNIST_DIR


@pytest.fixture(scope="session")
def mnist_test(mnist_dir):
    from jpegweights.training.mnist import load_mnist

    return load_mnist(mnist_dir, "test")


@pytest.fixture(scope="session")
def bundled_mlp() -> Path:
    """The bundled MNIST MLP's folder (float weights, packages); tests never retrain it."""
    return ROOT / "models" / "mnist-mlp"


# ---------------------------------------------------------------- a real server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(
    cache_dir: Path, *args: str, env: dict[str, str] | None = None, model_dir: Path = MNIST_STORE
) -> Iterator[str]:
    with server_process(cache_dir, *args, env=env, model_dir=model_dir) as (url, _):
        yield url


# Start-up is awaited, not timed: the server loads every model of its store before /readyz says
# 200, which takes seconds on a quiet machine and minutes beside other CPU-bound work. The wait
# ends when the server is ready or its process exits; the cap is only there so that a server
# stuck forever cannot hang the suite.
STARTUP_CAP = 900


@contextmanager
def server_process(
    cache_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    model_dir: Path = MNIST_STORE,
    prefix: tuple[str, ...] = (),
) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real ``jpegweights serve`` in a subprocess, ready: (its URL, the process). Its output
    goes to ``server.log`` in ``cache_dir`` (a pipe nobody reads could fill and stall it).
    ``prefix``: a command that runs it, e.g. ``setpriv`` with fewer privileges."""
    port = free_port()
    cmd = [sys.executable, "-m", "jpegweights.cli.main", "serve", "--port", str(port), "--model-dir", str(model_dir)]
    environ = {
        **os.environ,
        "JPEGWEIGHTS_CACHE_DIR": str(cache_dir),
        "JPEGWEIGHTS_LOG_REQUESTS": "false",
        **(env or {}),
    }
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    log = Path(cache_dir) / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*prefix, *cmd, *args], cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_CAP
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited ({proc.returncode}): {log.read_text(errors='replace')[-3000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server alive but not ready after {STARTUP_CAP} s: {log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[str]:
    # a 5 ms batching window makes the coalescing of the concurrency test certain, not likely
    with running_server(tmp_path_factory.mktemp("server-cache"), env={"JPEGWEIGHTS_MAX_WAIT_MS": "5"}) as url:
        yield url
