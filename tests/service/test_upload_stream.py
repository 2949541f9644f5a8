"""Uploads stream to disk and are judged by their header as soon as it has arrived: a bad one
is refused while the client has sent only its first bytes, never buffered whole first. Real
server, raw socket: the client sends the header alone and awaits the answer."""

from __future__ import annotations

import json
import shutil
import socket
import struct
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import MNIST_STORE, running_server

ADMIN = "adm1n"
CAP = 120  # seconds: only a server that waits for the rest of the body reaches it
LINEAR = {"type": "Linear", "in_features": 784, "out_features": 10}
ARCHITECTURE = {"input_shape": [1, 28, 28], "layers": [{"type": "Flatten"}, LINEAR]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = tmp_path_factory.mktemp("upload-store")
    shutil.copytree(MNIST_STORE / "mnist-mlp", store / "mnist-mlp")
    with running_server(
        tmp_path_factory.mktemp("cache"), env={"JPEGWEIGHTS_ADMIN_TOKEN": ADMIN}, model_dir=store
    ) as url:
        yield url, store


def first_bytes_only(url: str, path: str, declared: int, first: bytes) -> tuple[int, dict]:
    """PUT declaring ``declared`` bytes, send ``first`` of them and read the answer."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=CAP) as s:
        s.sendall(
            f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {declared}\r\n\r\n".encode()
            + first
        )
        answer = read_answer(s)
    head, body = answer.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body)


def content_length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 1 << 62


def read_answer(s: socket.socket) -> bytes:
    """An HTTP answer, head and body (of its Content-Length), or what came before ``s`` closed."""
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < content_length(answer):
        chunk = s.recv(65536)
        if not chunk:
            break
        answer += chunk
    return answer


def safetensors_header(entries: dict, metadata: dict) -> bytes:
    header = json.dumps({**entries, "__metadata__": metadata}).encode()
    return struct.pack("<Q", len(header)) + header


def test_a_header_over_the_limit_is_refused_after_its_first_8_bytes(server):
    url, store = server
    status, body = first_bytes_only(url, "/models/huge", 1 << 29, struct.pack("<Q", 1 << 40))
    assert status == 422 and "header of 1099511627776 bytes exceeds the limit" in body["detail"], body
    assert not (store / "huge").exists() and not [p for p in store.iterdir() if p.name.startswith(".staging-")]


def test_float_weights_that_do_not_fit_their_architecture_are_refused_before_their_data(server):
    url, store = server
    size = 2 * 16384 * 16384  # 512 MiB of float16, never sent
    head = safetensors_header(
        {"w": {"dtype": "F16", "shape": [16384, 16384], "data_offsets": [0, size]}},
        {"architecture": json.dumps(ARCHITECTURE)},
    )
    status, body = first_bytes_only(url, "/models/misfit", len(head) + size, head)
    assert status == 422 and "does not fit its architecture" in body["detail"] and "unexpected ['w']" in body["detail"]
    assert not (store / "misfit").exists() and not [p for p in store.iterdir() if p.name.startswith(".staging-")]


def test_a_client_that_sends_the_whole_body_still_reads_the_refusal(server):
    """The answer comes while the body is still arriving: httpx (as curl) reads the 422 rather
    than a reset connection, and the server drains what is left without keeping it."""
    url, store = server

    def body():
        yield struct.pack("<Q", 1 << 40)
        for _ in range(64):
            yield bytes(1 << 20)

    headers = {"Authorization": f"Bearer {ADMIN}", "Content-Length": str(8 + (64 << 20))}
    r = httpx.put(f"{url}/models/whole", content=body(), headers=headers, timeout=CAP)
    assert r.status_code == 422 and "header of 1099511627776 bytes exceeds" in r.json()["detail"]
    assert not (store / "whole").exists()


def test_an_upload_that_stalls_is_cut_off_and_the_next_one_goes_through(tmp_path_factory):
    """An upload holds the upload slot (one at a time) only for ``upload_timeout_s``."""
    store = tmp_path_factory.mktemp("stall-store")
    shutil.copytree(MNIST_STORE / "mnist-mlp", store / "mnist-mlp")
    package = (MNIST_STORE / "mnist-mlp" / "model.jpw").read_bytes()
    env = {"JPEGWEIGHTS_ADMIN_TOKEN": ADMIN, "JPEGWEIGHTS_UPLOAD_TIMEOUT_S": "2"}
    with running_server(tmp_path_factory.mktemp("cache"), env=env, model_dir=store) as url:
        status, body = first_bytes_only(url, "/models/stalled", len(package), package[:1000])
        assert status == 408 and "upload_timeout_s=2" in body["detail"], body
        r = httpx.put(f"{url}/models/next", content=package, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=CAP)
        assert r.status_code == 200, r.text
    assert sorted(p.name for p in store.iterdir()) == ["mnist-mlp", "next"]
