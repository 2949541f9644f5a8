"""The client against a real server subprocess, with test transports that cut or corrupt the stream."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import stat

import httpx
import numpy as np
import pytest
import torch

from jpegweights.client import AsyncClient, Client, HTTPStatusError, IntegrityError, TransportError
from tests.conftest import ROOT


class Tap(httpx.HTTPTransport):
    """A real transport that can cut or corrupt /weights bodies and counts what they carried."""

    def __init__(self, cut_after: int | None = None, corrupt: bool = False):
        super().__init__()
        self.cut_after, self.corrupt = cut_after, corrupt
        self.weight_bytes = 0
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path != "/weights":
            return response
        self.requests.append(request)
        tap = self

        class Stream(httpx.SyncByteStream):
            def __iter__(self):
                sent = 0
                for chunk in response.stream:
                    if tap.corrupt and sent == 0 and chunk:
                        chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                    if tap.cut_after is not None and sent + len(chunk) > tap.cut_after:
                        chunk = chunk[: tap.cut_after - sent]
                        tap.weight_bytes += len(chunk)
                        tap.cut_after = None  # only the first transfer is cut
                        yield chunk
                        raise httpx.ReadError("connection cut by the test")
                    sent += len(chunk)
                    tap.weight_bytes += len(chunk)
                    yield chunk

            def close(self):
                response.stream.close()

        return httpx.Response(response.status_code, headers=response.headers, stream=Stream(), request=request)


def package_size(server) -> int:
    return len(httpx.get(f"{server}/weights", params={"quality": 20}).content)


def test_load_predicts_what_the_server_predicts(server, mnist_test, tmp_path):
    x = mnist_test.images[:1000]
    with Client(server, cache_dir=tmp_path) as c:
        model = c.load("mnist-mlp", quality=20)
        remote = []
        for i in range(0, 1000, 250):
            remote += c.predict(x[i : i + 250], model="mnist-mlp")["predictions"]
    local = model.predict(x.float())["predictions"]
    assert local == remote
    assert np.mean(np.array(local) == mnist_test.labels[:1000].numpy()) >= 0.97


def test_load_in_the_compressed_domain(server, mnist_test, tmp_path):
    x = mnist_test.images[:1000].float()
    with Client(server, cache_dir=tmp_path) as c:
        dense, small = c.load("mnist-mlp", quality=20), c.load("mnist-mlp", quality=20, compressed_domain="auto")
    assert dense.compressed_domain is None and small.compressed_domain["layers"] == 1
    assert small.compressed_domain["resident_bytes"] <= small.compressed_domain["float32_bytes"] / 8
    assert dense.resident_bytes == 1_628_200 and small.resident_bytes == small.compressed_domain["resident_bytes"]
    a, b = dense.predict(x)["predictions"], small.predict(x)["predictions"]
    assert sum(p == q for p, q in zip(a, b)) >= 998  # libjpeg's rounding and clamping move a rare borderline digit


def test_second_load_transfers_no_weight_bytes(server, tmp_path):
    tap = Tap()
    with Client(server, cache_dir=tmp_path, transport=tap) as c:
        c.load("mnist-mlp", quality=20)
        first = tap.weight_bytes
        c.load("mnist-mlp", quality=20)
    assert first == package_size(server) and tap.weight_bytes == first
    assert tap.requests[-1].headers["if-none-match"].startswith('"sha256-')


def test_interrupted_download_resumes_and_verifies(server, tmp_path):
    size = package_size(server)
    tap = Tap(cut_after=size // 2)
    with Client(server, cache_dir=tmp_path, transport=tap, backoff=0) as c:
        path = c.download("mnist-mlp", quality=20)
    assert tap.requests[-1].headers["range"] == f"bytes={size // 2}-"
    assert tap.weight_bytes == size  # nothing sent twice
    assert hashlib.sha256(path.read_bytes()).hexdigest() == re.search(
        r"sha256-(\w+)", httpx.get(f"{server}/weights").headers["etag"]
    ).group(1)


def test_download_resumes_across_process_restarts(server, tmp_path):
    size = package_size(server)
    with Client(server, cache_dir=tmp_path, transport=Tap(cut_after=size // 3), retries=0) as c:
        with pytest.raises(TransportError, match="connection cut"):
            c.download("mnist-mlp", quality=20)
    parts = list(tmp_path.rglob("*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size == size // 3
    assert not list(tmp_path.rglob("q20.jpw"))  # nothing half-done in the cache
    tap = Tap()
    with Client(server, cache_dir=tmp_path, transport=tap) as fresh:  # a new process, in effect
        path = fresh.download("mnist-mlp", quality=20)
    assert tap.requests[0].headers["range"] == f"bytes={size // 3}-"
    assert tap.weight_bytes == size - size // 3 and path.stat().st_size == size
    assert not list(tmp_path.rglob("*.part"))


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_cached_and_copied_packages_get_umask_modes(server, tmp_path, umask):
    """Even a part file left 0600 (by another program, or an older version) enters the cache
    with the umask's mode, as does a copy to ``dest``: never a temporary file's 0600."""
    size = package_size(server)
    old = os.umask(umask)
    try:
        with Client(server, cache_dir=tmp_path / "cache", transport=Tap(cut_after=size // 3), retries=0) as c:
            with pytest.raises(TransportError, match="connection cut"):
                c.download("mnist-mlp", quality=20)
        [part] = (tmp_path / "cache").rglob("*.part")
        part.chmod(0o600)
        with Client(server, cache_dir=tmp_path / "cache") as c:
            c.download("mnist-mlp", quality=20, dest=tmp_path / "copy.jpw")
    finally:
        os.umask(old)
    files = [*(tmp_path / "cache").rglob("*"), tmp_path / "copy.jpw"]
    want = 0o666 & ~umask
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files if p.is_file()} == {
        "q20.jpw": want,
        "q20.json": want,
        "copy.jpw": want,
    }


def test_corrupted_bytes_raise_integrity_error_and_leave_the_cache_empty(server, tmp_path):
    with Client(server, cache_dir=tmp_path, transport=Tap(corrupt=True)) as c:
        with pytest.raises(IntegrityError, match="SHA-256 .* server's ETag says .*discarded"):
            c.download("mnist-mlp", quality=20)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_tampered_cache_is_downloaded_again(server, tmp_path):
    with Client(server, cache_dir=tmp_path) as c:
        path = c.download("mnist-mlp", quality=20)
        path.write_bytes(b"tampered")
        assert c.download("mnist-mlp", quality=20).stat().st_size == package_size(server)


def test_other_qualities_and_state_dict(server, tmp_path):
    with Client(server, cache_dir=tmp_path) as c:
        state = c.state_dict("mnist-mlp", quality=10)
        default = c.download()  # the server's default model at its stored quality
    assert state["1.weight"].shape == (512, 784) and state["1.weight"].dtype == torch.float32
    assert default.name == "default.jpw" and default.parent.name == "mnist-mlp"


def test_errors(server, tmp_path):
    with Client(server, cache_dir=tmp_path, backoff=0) as c:
        with pytest.raises(HTTPStatusError, match="unknown model 'nope'") as info:
            c.download("nope")
        assert info.value.status == 404
        with pytest.raises(HTTPStatusError, match="422.*outside 0..255"):
            c.predict([[999] * 784])
        with pytest.raises(ValueError, match="exactly one of"):
            c.predict()
    with Client("http://127.0.0.1:9", cache_dir=tmp_path, retries=1, backoff=0) as c:
        with pytest.raises(TransportError, match="127.0.0.1:9"):
            c.models()


def test_async_client(server, tmp_path, mnist_test):
    async def run():
        async with AsyncClient(server, cache_dir=tmp_path) as c:
            model = await c.load("mnist-cnn", quality=20)
            answer = await c.predict(mnist_test.images[:50], model="mnist-cnn")
            return model, answer

    model, answer = asyncio.run(run())
    assert model.predict(mnist_test.images[:50].float())["predictions"] == answer["predictions"]


def test_readme_example_runs(server, tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    example = re.search(r"client-example: [^\n]*\n```python\n(.*?)```", text, re.S).group(1)
    assert len(example.strip().splitlines()) <= 5
    monkeypatch.setenv("JPEGWEIGHTS_CACHE", str(tmp_path))
    namespace: dict = {}
    exec(compile(example.replace("http://127.0.0.1:8000", server), "README.md", "exec"), namespace)
    assert namespace["digits"] == [7, 2]


def test_a_client_only_install_needs_no_server_packages():
    """`pip install jpegweights` (no extras) brings the codec and the client, not FastAPI or uvicorn."""
    from importlib.metadata import requires

    base = [r for r in requires("jpegweights") if "extra ==" not in r]
    names = {re.split(r"[\s\[<>=;]", r, maxsplit=1)[0].lower() for r in base}
    assert names >= {"torch", "safetensors", "httpx"} and not names & {
        "fastapi",
        "uvicorn",
        "starlette",
        "pydantic-settings",
        "prometheus-client",
    }, names


def test_client_never_imports_the_server():
    import subprocess
    import sys

    code = (
        "import jpegweights.client, sys; "
        "bad = [m for m in ('jpegweights.service', 'fastapi', 'uvicorn') if m in sys.modules]; "
        "print(bad); sys.exit(bool(bad))"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True).returncode == 0


def test_building_a_model_imports_no_compiler():
    """A cold client's first model: its checks on the meta device must not pull in torch._dynamo
    (and sympy), 0.7 s of its start, which decompositions of meta kernels import on first use."""
    import subprocess
    import sys

    code = (
        "import sys; from jpegweights.client import PackagedModel; "
        "PackagedModel.from_package(open('models/mnist-cnn/model.jpw', 'rb').read()); "
        "bad = [m for m in ('torch._dynamo', 'sympy') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("status, tries", [(503, 2), (502, 2), (404, 1)])
def test_weights_downloads_are_retried_on_502_503_504_only(tmp_path, status, tries):
    data = (ROOT / "models" / "mnist-mlp" / "model.jpw").read_bytes()
    etag = '"sha256-' + hashlib.sha256(data).hexdigest() + '"'
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) == 1:
            return httpx.Response(status, json={"detail": "not now"})
        return httpx.Response(200, content=data, headers={"etag": etag})

    with Client("http://test", transport=httpx.MockTransport(handler), cache_dir=tmp_path, backoff=0) as c:
        if tries == 1:
            with pytest.raises(HTTPStatusError, match=f"{status} from .*not now"):
                c.download("mnist-mlp", quality=20)
        else:
            assert c.download("mnist-mlp", quality=20).read_bytes() == data
    assert calls == ["/weights"] * tries
