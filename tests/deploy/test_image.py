"""The server image as users run it. deploy/image/build.sh builds the Dockerfile into a buildah storage of
this module's own; the image's command then runs as uid 10001 with the image's model store mounted
read-only, and the four models answer what users ask them. The storage is removed afterwards.

Minutes of work and about 13 GB of disk while it runs (vfs storage: the image and its container are
full copies), so only `make image-test` runs it; `make test` does where buildah and mmdebstrap exist."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from jpegweights.codec import load_manifest
from jpegweights.files import cache_dir
from tests.conftest import ROOT, STARTUP_CAP, free_port
from tests.e2e.test_pretrained import CAT, CAT_CLASSES, SENTENCES

pytestmark = pytest.mark.skipif(
    os.environ.get("JPEGWEIGHTS_IMAGE_TEST") != "1",
    reason="builds a 6 GB image: `make image-test` runs it (make test does where buildah and mmdebstrap exist)",
)

TAG = "localhost/jpegweights:image-test"
MODELS = {
    "mnist-mlp": "image-classification",
    "mnist-cnn": "image-classification",
    "mobilenet_v2": "image-classification",
    "all-minilm-l6-v2": "text-embedding",
}


def run(*cmd: str | Path) -> str:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    assert result.returncode == 0, f"{cmd}: {result.stderr[-3000:]}"
    return result.stdout.strip()


@pytest.fixture(scope="module")
def storage() -> Iterator[Path]:
    """A folder of this run's own: two test runs on one machine must not share one (the second
    emptied it, or found the first's container). The folders of runs killed half-way, whose
    process is gone, are removed first: each holds a 6 GB image."""
    for old in cache_dir().glob("image-test*"):
        pid = old.name.removeprefix("image-test").removeprefix("-")
        if not (pid.isdigit() and Path(f"/proc/{pid}").exists()):
            shutil.rmtree(old, ignore_errors=True)
    path = cache_dir() / f"image-test-{os.getpid()}"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def buildah(storage) -> list[str]:
    return ["buildah", "--storage-driver", "vfs", "--root", str(storage / "root"), "--runroot", str(storage / "run")]


@pytest.fixture(scope="module")
def container(storage, buildah) -> str:
    """A working container of the freshly built image (its build log: build.log in the storage)."""
    env = {**os.environ, "BUILDAH_ROOT": str(storage), "PYTHON": sys.executable}
    with open(storage / "build.log", "wb") as log:
        build = subprocess.run([ROOT / "deploy" / "image" / "build.sh", TAG], env=env, stdout=log, stderr=log)
    assert build.returncode == 0, (storage / "build.log").read_text(errors="replace")[-5000:]
    return run(*buildah, "from", "--name", "jpegweights-image-test", TAG)


@pytest.fixture(scope="module")
def config(buildah, container) -> dict:
    return json.loads(run(*buildah, "inspect", container))["Docker"]["config"]


def await_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    """Polls /readyz until 200, as tests/conftest.py's server_process does (the cap only stops a stuck server)."""
    deadline = time.monotonic() + STARTUP_CAP
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): {log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"server alive but not ready after {STARTUP_CAP} s: {log.read_text()[-3000:]}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def server(storage, buildah, container, config) -> Iterator[tuple[str, subprocess.Popen]]:
    """The image's command as uid 10001, its store /models bind-mounted read-only over itself. Chroot
    isolation shares the host's network: the server listens on a free port of 127.0.0.1."""
    models = Path(run(*buildah, "mount", container)) / "models"
    port = free_port()
    env = ["--env=JPEGWEIGHTS_HOST=127.0.0.1", f"--env=JPEGWEIGHTS_PORT={port}"]
    cmd = [*buildah, "run", "--isolation", "chroot", "--user", "10001:10001", *env]
    cmd += ["--volume", f"{models}:/models:ro", container, "--", *config["Cmd"]]
    log = storage / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        await_ready(f"http://127.0.0.1:{port}", proc, log)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # buildah and the server it started: one session of their own
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def server_uids(sid: int) -> set[int]:
    """The real uids of the processes of session ``sid`` that run the image's jpegweights (buildah's own
    helpers, which set up the chroot, run as root)."""
    uids = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if os.getsid(int(proc.name)) == sid and b"/opt/venv/bin/jpegweights" in (proc / "cmdline").read_bytes():
                uid_line = next(line for line in (proc / "status").read_text().splitlines() if line.startswith("Uid:"))
                uids.add(int(uid_line.split()[1]))
        except (ProcessLookupError, FileNotFoundError):
            pass  # exited meanwhile
    return uids


def test_the_image_runs_its_server_as_uid_10001_with_a_readiness_healthcheck(config):
    assert config["User"] == "10001:10001" and config["Cmd"] == ["jpegweights", "serve"]
    assert "JPEGWEIGHTS_MODEL_DIR=/models" in config["Env"]
    assert "http://127.0.0.1:8000/readyz" in " ".join(config["Healthcheck"]["Test"])


def test_uid_10001_serves_all_four_models_from_the_read_only_store(server):
    url, proc = server
    assert server_uids(proc.pid) == {10001}
    ready = httpx.get(f"{url}/readyz").json()
    assert ready["ready"] and sorted(ready["models"]) == sorted(MODELS) and not ready["failed"]
    listing = httpx.get(f"{url}/models").json()
    assert {m["name"]: m["handler"] for m in listing["models"]} == MODELS


def test_mobilenet_v2_sees_the_cat(server):
    r = httpx.post(f"{server[0]}/predict", params={"model": "mobilenet_v2"}, files={"file": CAT.open("rb")}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["labels"][0] in CAT_CLASSES


def test_minilm_scores_the_similar_pair_above_the_unrelated_one(server):
    pairs = [[SENTENCES[0], SENTENCES[1]], [SENTENCES[0], SENTENCES[2]]]
    r = httpx.post(f"{server[0]}/predict", json={"model": "all-minilm-l6-v2", "pairs": pairs}, timeout=60)
    assert r.status_code == 200, r.text
    similar, unrelated = r.json()["similarities"]
    assert similar > 0.5 > 0.2 > unrelated


@pytest.mark.parametrize("model", ["mobilenet_v2", "all-minilm-l6-v2"])
def test_another_quality_is_encoded_from_the_float_source_the_build_imported(server, model):
    """The image's server cannot write /models, and reads float sources that root wrote at build time."""
    r = httpx.get(f"{server[0]}/weights", params={"model": model, "quality": 50}, timeout=300)
    assert r.status_code == 200, r.text
    assert r.headers["x-jpegweights-quality"] == "50"
    qualities = {e["quality"] for e in load_manifest(r.content)["tensors"].values() if e["coding"] == "jpeg"}
    assert qualities == {50}
    served = httpx.get(f"{server[0]}/weights", params={"model": model}, timeout=60)
    assert served.headers["x-jpegweights-quality"] == "90" and len(served.content) > len(r.content)
