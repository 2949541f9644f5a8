"""deploy/nginx.conf for real: Debian's nginx in front of two uvicorn replicas on loopback."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import ROOT, free_port, running_server

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (make test installs it with apt-get when run as root)"
)


def render(ports: list[int], listen: int, workdir) -> str:
    servers = " ".join(f"server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;" for p in ports)
    values = {"LISTEN_PORT": f"127.0.0.1:{listen}", "UPSTREAM_SERVERS": servers, "CACHE_DIR": str(workdir / "cache")}
    # envsubst semantics, as the nginx image applies them: only these names; nginx's $vars stay
    site = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], (ROOT / "deploy" / "nginx.conf").read_text())
    temp = {k: workdir / k for k in ("client", "proxy", "fastcgi", "uwsgi", "scgi")}
    for d in temp.values():
        d.mkdir(parents=True, exist_ok=True)
    user = "user root;" if os.geteuid() == 0 else ""  # as root, workers would run as nobody: no access to tmp dirs
    return f"""
{user}
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {temp["client"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    {site}
}}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two replicas sharing one cache directory, nginx in front: (url, [replica urls], [replica pids])."""
    work = tmp_path_factory.mktemp("nginx")
    shared_cache = work / "weights-cache"
    with running_server(shared_cache) as a, running_server(shared_cache) as b:
        listen = free_port()
        conf = work / "nginx.conf"
        conf.write_text(render([int(a.rsplit(":", 1)[1]), int(b.rsplit(":", 1)[1])], listen, work))
        proc = subprocess.Popen(
            [NGINX, "-c", str(conf), "-p", str(work)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        url = f"http://127.0.0.1:{listen}"
        for _ in range(100):
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        try:
            yield url, [a, b]
        finally:
            proc.terminate()
            proc.wait(10)


def served(replica: str) -> float:
    text = httpx.get(f"{replica}/metrics").text
    return sum(
        float(m)
        for m in re.findall(r'jpegweights_requests_total\{method="POST",route="/predict",status="200"\} (\S+)', text)
    )


def test_the_config_is_valid(tmp_path):
    conf = tmp_path / "nginx.conf"
    conf.write_text(render([8001, 8002], free_port(), tmp_path))
    result = subprocess.run([NGINX, "-t", "-c", str(conf), "-p", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_weights_are_cached_by_nginx(cluster):
    url, _ = cluster
    first = httpx.get(f"{url}/weights", params={"quality": 20})
    second = httpx.get(f"{url}/weights", params={"quality": 20})
    assert first.status_code == second.status_code == 200
    assert first.headers["x-cache-status"] in ("MISS", "EXPIRED") and second.headers["x-cache-status"] == "HIT"
    assert first.content == second.content and first.headers["etag"] == second.headers["etag"]
    assert (
        httpx.get(
            f"{url}/weights", params={"quality": 20}, headers={"If-None-Match": first.headers["etag"]}
        ).status_code
        == 304
    )
    part = httpx.get(f"{url}/weights", params={"quality": 20}, headers={"Range": "bytes=100-"})
    assert part.status_code == 206 and part.content == first.content[100:]
    tile = [httpx.get(f"{url}/models/mnist-mlp/weights/1.weight.jpg") for _ in range(2)]
    assert tile[1].headers["x-cache-status"] == "HIT" and tile[0].content == tile[1].content


def test_losing_a_replica_under_load_loses_no_request(cluster, mnist_test):
    url, replicas = cluster
    n = 600
    x, y = mnist_test.images[:n], mnist_test.labels[:n].tolist()
    before = [served(r) for r in replicas]
    victim = replicas[0]

    def ask(i: int):
        with httpx.Client(timeout=30) as c:
            r = c.post(f"{url}/predict", json={"inputs": x[i : i + 1].tolist()})
            return r.status_code, r.json().get("predictions", [None])[0] if r.status_code == 200 else r.text

    results = []
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(ask, i) for i in range(n)]
        for i, f in enumerate(futures):
            if i == 150:  # a quarter of the way in: check both served, then kill the first replica
                spread = [served(r) - b for r, b in zip(replicas, before)]
                assert all(s > 0 for s in spread), f"requests did not spread over both replicas: {spread}"
                kill(victim)
            results.append(f.result())
    assert all(status == 200 for status, _ in results), [r for r in results if r[0] != 200][:3]
    accuracy = sum(pred == label for (_, pred), label in zip(results, y)) / n
    assert accuracy >= 0.97
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{victim}/healthz", timeout=2)


def kill(replica: str) -> None:
    """SIGKILL, no graceful shutdown: in-flight requests die with the process."""
    port = replica.rsplit(":", 1)[1]
    pids = subprocess.run(["pgrep", "-f", f"serve --port {port} "], capture_output=True, text=True).stdout.split()
    assert pids, f"no process serves {replica}"
    for pid in pids:
        os.kill(int(pid), signal.SIGKILL)
