"""A client that stops reading a /weights download is cut off after ``send_stall_s``, and the
file it held is freed; other clients are served meanwhile. A slow reader that keeps reading
is served whole."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import httpx
import torch
from safetensors.torch import save_file

from jpegweights.codec import EncodeConfig
from jpegweights.handlers.importers import from_state_dict, write_folder
from tests.conftest import running_server

CAP = 300  # only so that a server that never cuts the reader off cannot hang the suite
HIDDEN = 16384  # an MLP this wide, coded from noise at quality 100, is larger than the socket buffers


def big_store(root):
    """A store of one model whose package (about 9 MB) is larger than what loopback's socket
    buffers hold between server and client (4 MiB each way at most here), so that a client
    that stops reading stops the server's sending."""
    g = torch.Generator().manual_seed(0)
    state = {
        "1.weight": torch.randn(HIDDEN, 784, generator=g), "1.bias": torch.zeros(HIDDEN),
        "3.weight": torch.randn(10, HIDDEN, generator=g), "3.bias": torch.zeros(10),
    }  # fmt: skip
    save_file(state, str(root / "w.safetensors"))
    layers = [
        {"type": "Flatten"}, {"type": "Linear", "in_features": 784, "out_features": HIDDEN}, {"type": "ReLU"},
        {"type": "Linear", "in_features": HIDDEN, "out_features": 10},
    ]  # fmt: skip
    imported = from_state_dict(root / "w.safetensors", {"input_shape": [1, 28, 28], "layers": layers})
    size = write_folder(imported, root / "store" / "big", EncodeConfig(quality=100))
    return root / "store", size


def test_a_reader_that_stalls_is_cut_off_and_others_are_served(tmp_path):
    store, size = big_store(tmp_path)
    assert size > 8 << 20
    cache = tmp_path / "cache"
    with running_server(cache, env={"JPEGWEIGHTS_SEND_STALL_S": "3"}, model_dir=store) as url:
        parts = urlsplit(url)
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.settimeout(CAP)
        stalled.connect((parts.hostname, parts.port))
        stalled.sendall(b"GET /weights?model=big HTTP/1.1\r\nHost: x\r\n\r\n")
        got = stalled.recv(65536)
        assert got.startswith(b"HTTP/1.1 200")
        # the reader stops reading; meanwhile another client downloads the whole package
        whole = httpx.get(f"{url}/weights", params={"model": "big"}, timeout=CAP)
        assert whole.status_code == 200 and len(whole.content) == size
        deadline = time.monotonic() + CAP
        while "download_stalled" not in (cache / "server.log").read_text():
            assert time.monotonic() < deadline, "the stalled reader was never cut off"
            time.sleep(0.1)
        while chunk := stalled.recv(1 << 20):  # what the server had sent before, then the end
            got += chunk
        stalled.close()
        assert len(got) < size  # cut off: the connection ended before the package did
        assert httpx.get(f"{url}/weights", params={"model": "big"}, timeout=CAP).status_code == 200


def test_a_slow_reader_that_keeps_reading_gets_the_whole_package(tmp_path):
    store, size = big_store(tmp_path)
    with running_server(tmp_path / "cache", env={"JPEGWEIGHTS_SEND_STALL_S": "5"}, model_dir=store) as url:
        received = 0
        with httpx.stream("GET", f"{url}/weights", params={"model": "big"}, timeout=CAP) as r:
            for chunk in r.iter_bytes(1 << 20):
                received += len(chunk)
                time.sleep(0.05)  # about 20 MB/s: slow, never stalled for a second
        assert r.status_code == 200 and received == size
