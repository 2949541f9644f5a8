"""jpegweights on Ray Serve (``jpegweights.deploy.ray``), on a local Ray cluster started here:
two replicas that fetch their packages from a jpegweights server the tests start, answering
through Ray's HTTP proxy; one replica killed with SIGKILL under 16 concurrent clients.

One cluster for the module (starting one takes seconds); every wait is for a condition, capped
only so that a stuck cluster cannot hang the suite."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from tests.conftest import ROOT, free_port, running_server

ray = pytest.importorskip("ray", reason="Ray is the [ray] extra: pip install 'jpegweights[ray]'")
serve = pytest.importorskip("ray.serve")

from jpegweights.client import Client, JpegWeightsError  # noqa: E402
from jpegweights.deploy.ray import REPLICA_HEADER, RayArgs, app  # noqa: E402
from tests.e2e.test_pretrained import CAT, CAT_CLASSES  # noqa: E402

APP = "jpegweights"
REPLICA_TITLE = f"ServeReplica:{APP}:JpegWeights"  # Ray's process title for the replicas' actors
CAP = 300  # seconds: only a stuck cluster reaches it


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def our_processes(title: str = "") -> list[int]:
    """Our descendants (the cluster's processes) whose command line holds ``title``."""
    me, found = os.getpid(), []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if title.encode() not in (proc / "cmdline").read_bytes():
                continue
            pid = parent = int(proc.name)
            while parent > 1:
                parent = _ppid(parent)
                if parent == me:
                    found.append(pid)
                    break
        except (OSError, ValueError):  # gone meanwhile
            continue
    return found


def wait_for(condition: Callable[[], object], what: str) -> object:
    deadline = time.monotonic() + CAP
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {CAP} s")
        time.sleep(0.05)
    return result


@dataclass
class Cluster:
    url: str  # Ray's proxy
    source: str  # the jpegweights server the replicas fetched from
    work_dir: Path


# Ray Serve kills a proxy that has not answered its ready check within 5 s of starting (and one
# whose health check takes 10 s): on a machine whose cores other work shares, starting takes
# longer. The cluster's own readiness is awaited below; these only stop Ray giving up first.
RAY_TIMEOUTS = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "300", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "60"}


def proxy_listening(url: str) -> bool:
    """Ray's proxy answers HTTP (its /-/healthz says 503 until an application is deployed)."""
    try:
        httpx.get(f"{url}/-/healthz", timeout=5)
        return True
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    # the source: MNIST's MLP and, where `make pretrained` imported it, MobileNetV2 (the cat photo)
    store = tmp_path_factory.mktemp("source-store")
    for name in ("mnist-mlp", "mobilenet_v2"):
        if (ROOT / "models" / name / "model.jpw").is_file():
            (store / name).symlink_to(ROOT / "models" / name, target_is_directory=True)
    work_dir = tmp_path_factory.mktemp("ray-work")
    ray_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    with (
        running_server(tmp_path_factory.mktemp("source-cache"), model_dir=store) as source,
        pytest.MonkeyPatch.context() as env,
    ):
        for name, seconds in RAY_TIMEOUTS.items():  # inherited by the cluster's processes
            env.setenv(name, seconds)
        try:
            ray.init(num_cpus=2, include_dashboard=False, _temp_dir=ray_dir, log_to_driver=False)
            port = free_port()
            try:
                serve.start(http_options={"host": "127.0.0.1", "port": port})
            except TimeoutError:  # serve.start waits a fixed 60 s for the proxy, which goes on starting
                pass
            wait_for(lambda: proxy_listening(f"http://127.0.0.1:{port}"), "Ray's proxy")
            # serve.run returns once every replica has loaded its models and passed its health check
            serve.run(app({"source": source, "num_replicas": 2, "work_dir": str(work_dir)}), name=APP, route_prefix="/")
            yield Cluster(f"http://127.0.0.1:{port}", source, work_dir)
        finally:
            serve.shutdown()
            ray.shutdown()
            for pid in our_processes("ray"):  # whatever outlived the shutdown, by its pid
                os.kill(pid, signal.SIGKILL)
            shutil.rmtree(ray_dir, ignore_errors=True)


def replicas_answering(url: str, at_least: int) -> set[str]:
    """The replica ids behind ``url``'s answers, once ``at_least`` of them answered."""
    seen: set[str] = set()
    with httpx.Client(base_url=url, timeout=30) as c:

        def enough() -> bool:
            seen.add(c.get("/readyz").headers[REPLICA_HEADER])
            return len(seen) >= at_least

        wait_for(enough, f"{at_least} replicas answering")
    return seen


def test_two_replicas_answer_the_service_through_rays_proxy(cluster, mnist_test):
    assert len(replicas_answering(cluster.url, 2)) == 2
    with httpx.Client(base_url=cluster.url, timeout=60) as c, httpx.Client(base_url=cluster.source, timeout=60) as s:
        ready = c.get("/readyz").json()
        assert ready["ready"] and "mnist-mlp" in ready["models"]
        # /v2 of some MNIST digits: what the source server answers for the same package
        digits = mnist_test.images[:16].numpy().astype(np.float32).reshape(16, 784)
        body = {"inputs": [{"name": "input", "shape": [16, 784], "datatype": "FP32", "data": digits.ravel().tolist()}]}
        ours, theirs = (x.post("/v2/models/mnist-mlp/infer", json=body) for x in (c, s))
        assert ours.status_code == 200, ours.text
        outputs = {o["name"]: o["data"] for o in ours.json()["outputs"]}
        reference = {o["name"]: o["data"] for o in theirs.json()["outputs"]}
        assert outputs["predictions"] == reference["predictions"]
        assert np.mean(np.array(outputs["predictions"]) == mnist_test.labels[:16].numpy()) >= 0.9
        # the stored package, byte for byte, with the source's ETag; no other quality without a float source
        package = c.get("/weights", params={"model": "mnist-mlp"})
        assert package.content == (ROOT / "models" / "mnist-mlp" / "model.jpw").read_bytes()
        assert package.headers["etag"] == s.get("/weights", params={"model": "mnist-mlp"}).headers["etag"]
        other = c.get("/weights", params={"model": "mnist-mlp", "quality": 50})
        assert other.status_code == 404 and "no float source" in other.json()["detail"]
        page = c.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


def test_a_cat_photo_through_rays_proxy(cluster):
    if not (ROOT / "models" / "mobilenet_v2" / "model.jpw").is_file():
        pytest.skip("MobileNetV2 is not imported: `make pretrained` (make test does it)")
    image = base64.b64encode(CAT.read_bytes()).decode()
    r = httpx.post(f"{cluster.url}/predict", json={"model": "mobilenet_v2", "images": [image]}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["labels"][0] in CAT_CLASSES


@dataclass
class Load:
    """16 clients posting MNIST predictions until stopped: 8 with bare httpx (every failure
    counts) and 8 with ``jpegweights.client`` (which retries Ray's bare 500)."""

    url: str
    raw: list[tuple[float, float, object, str | None]] = field(default_factory=list)  # start, end, status, replica
    client_failures: list[Exception] = field(default_factory=list)
    client_answers: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run_raw(self, body: dict) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as c:
            while not self.stop.is_set():
                start = time.monotonic()
                try:
                    r = c.post("/predict", json=body)
                    status, replica = r.status_code, r.headers.get(REPLICA_HEADER)
                except httpx.HTTPError as exc:
                    status, replica = type(exc).__name__, None
                self.raw.append((start, time.monotonic(), status, replica))

    def run_client(self, inputs: list) -> None:
        with Client(self.url, timeout=60, progress=False) as c:
            while not self.stop.is_set():
                try:
                    c.predict(inputs, model="mnist-mlp")
                    self.client_answers += 1
                except JpegWeightsError as exc:
                    self.client_failures.append(exc)

    def answered_by(self, since: float) -> set[str]:
        return {r[3] for r in list(self.raw) if r[0] >= since and r[2] == 200}


def test_a_replica_killed_under_load_fails_only_its_requests_in_flight(cluster, mnist_test):
    before = replicas_answering(cluster.url, 2)
    victim = our_processes(REPLICA_TITLE)
    assert len(victim) == 2, victim
    inputs = mnist_test.images[:1].numpy().reshape(1, 784).tolist()
    load = Load(cluster.url)
    threads = [
        threading.Thread(target=load.run_raw, args=({"model": "mnist-mlp", "inputs": inputs},)) for _ in range(8)
    ]
    threads += [threading.Thread(target=load.run_client, args=(inputs,)) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        started = time.monotonic()
        wait_for(lambda: load.answered_by(started) == before, "load on both replicas")
        killed_at = time.monotonic()
        os.kill(victim[0], signal.SIGKILL)
        # recovered: a replacement answers, and Ray counts two running replicas again
        wait_for(lambda: load.answered_by(killed_at) - before, "an answer from a replacement replica")
        wait_for(lambda: _running_replicas() == 2, "two running replicas")
        recovered = time.monotonic()
        wait_for(lambda: len([r for r in list(load.raw) if r[0] > recovered]) >= 100, "100 requests after recovery")
    finally:
        load.stop.set()
        for t in threads:
            t.join()
    failed = [r for r in load.raw if r[2] != 200]
    in_flight = [r for r in load.raw if r[0] < killed_at < r[1]]
    print(
        f"\nray kill: {len(failed)} of {len(load.raw)} bare requests failed ({len(in_flight)} in flight at the kill), "
        f"client: {len(load.client_failures)} of {load.client_answers + len(load.client_failures)}, "
        f"recovered (a replacement answering, 2 running) {recovered - killed_at:.1f} s after the kill"
    )
    assert all(r[0] < killed_at for r in failed), f"requests sent after the kill failed: {failed}"
    assert len(failed) <= len(in_flight) <= 8
    assert not load.client_failures, load.client_failures[:3]
    # the replacement removed the killed replica's store folder as it started
    assert {int(p.name.split("-")[1]) for p in (cluster.work_dir / "stores").iterdir()} == set(
        our_processes(REPLICA_TITLE)
    )


def _running_replicas() -> int:
    status = serve.status().applications[APP].deployments["JpegWeights"]
    return status.replica_states.get("RUNNING", 0)


def test_the_config_example_is_valid_for_ray_serve():
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "deploy" / "ray" / "serve.yaml").read_text()))
    (application,) = config.applications
    assert application.import_path == "jpegweights.deploy.ray:app"
    RayArgs.model_validate(application.args)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "source"),
        ({"source": "models", "replicas": 2}, "replicas"),
        ({"source": "m", "num_replicas": 0}, "num_replicas"),
    ],
)
def test_bad_arguments_are_refused_with_their_name(args, message):
    with pytest.raises(ValueError, match=message):
        app(args)


def test_models_may_be_given_comma_separated_as_serve_run_passes_them():
    assert RayArgs.model_validate({"source": "m", "models": "mnist-mlp, mobilenet_v2"}).models == [
        "mnist-mlp",
        "mobilenet_v2",
    ]
