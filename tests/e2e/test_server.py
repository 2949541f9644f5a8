"""End to end: a real uvicorn server, real HTTP, the real Triton client."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import torch


def test_predict_first_1000_test_images(server, mnist_test):
    x, y = mnist_test.images[:1000], mnist_test.labels[:1000]
    predictions = []
    with httpx.Client(base_url=server, timeout=30) as c:
        for i in range(0, 1000, 100):
            r = c.post("/predict", json={"inputs": x[i : i + 100].tolist()})
            assert r.status_code == 200
            predictions += r.json()["predictions"]
    accuracy = float(np.mean(np.array(predictions) == y.numpy()))
    assert accuracy >= 0.97, accuracy


def test_v2_infer_with_tritonclient(server, mnist_test):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=server.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("mnist-mlp")
    assert client.get_model_metadata("mnist-mlp")["inputs"][0]["shape"] == [-1, 1, 28, 28]
    x, y = mnist_test.images[:1000].numpy().astype(np.float32), mnist_test.labels[:1000].numpy()
    predictions = []
    for i in range(0, 1000, 250):
        batch = x[i : i + 250].reshape(-1, 784)
        inp = triton.InferInput("input", list(batch.shape), "FP32")
        inp.set_data_from_numpy(batch, binary_data=False)
        out = [
            triton.InferRequestedOutput("predictions", binary_data=False),
            triton.InferRequestedOutput("probabilities", binary_data=False),
        ]
        result = client.infer("mnist-mlp", [inp], outputs=out)
        assert result.as_numpy("probabilities").shape == (len(batch), 10)
        predictions += result.as_numpy("predictions").tolist()
    assert float(np.mean(np.array(predictions) == y)) >= 0.97


def test_weights_hash_304_and_resumed_download(server):
    with httpx.Client(base_url=server, timeout=30) as c:
        full = c.get("/weights", params={"quality": 20})
        etag = full.headers["etag"]
        assert etag == f'"sha256-{hashlib.sha256(full.content).hexdigest()}"'
        assert c.get("/weights", params={"quality": 20}, headers={"If-None-Match": etag}).status_code == 304
        half = len(full.content) // 2
        with c.stream("GET", "/weights", params={"quality": 20}) as r:  # a download cut half-way
            received = b""
            for chunk in r.iter_bytes(1024):
                received += chunk
                if len(received) >= half:
                    break
        rest = c.get("/weights", params={"quality": 20}, headers={"Range": f"bytes={len(received)}-", "If-Range": etag})
        assert rest.status_code == 206 and rest.headers["etag"] == etag
        assert hashlib.sha256(received + rest.content).hexdigest() == etag[8:-1]


def test_bad_inputs_over_real_http(server):
    with httpx.Client(base_url=server, timeout=30) as c:
        cases = [
            (c.post("/predict", json={"inputs": [[0] * 10]}), 422, "each sample must be"),
            (c.post("/predict", json={"inputs": [[256] * 784]}), 422, "outside 0..255"),
            (
                c.post(
                    "/predict",
                    content=b'{"inputs": [[NaN' + b",0" * 783 + b"]]}",
                    headers={"content-type": "application/json"},
                ),
                422,
                "NaN or Infinity",
            ),
            (c.post("/predict", json={"model": "x", "inputs": [[0] * 784]}), 404, "unknown model 'x'"),
            (c.post("/predict", content=b"[", headers={"content-type": "application/json"}), 400, "not valid JSON"),
            (c.post("/predict", content=b"x" * (9 * 1024 * 1024)), 413, "exceeds the limit"),
            (c.get("/weights", params={"quality": 0}), 422, "greater than or equal to 1"),
        ]
        for r, status, message in cases:
            assert r.status_code == status and message in r.text, (r.status_code, r.text)


def test_64_concurrent_clients_get_the_unbatched_answers(server, mnist_test):
    samples = [mnist_test.images[i : i + 1 + i % 4].tolist() for i in range(64)]
    with httpx.Client(base_url=server, timeout=30) as c:
        alone = [c.post("/predict", json={"inputs": s}).json() for s in samples]  # one at a time
        before = _forward_passes(c)

        def ask(s):
            with httpx.Client(base_url=server, timeout=30) as own:
                return own.post("/predict", json={"inputs": s}).json()

        with ThreadPoolExecutor(64) as pool:
            together = list(pool.map(ask, samples))
        passes = _forward_passes(c) - before
    # the same predictions; probabilities within float32 rounding of sums taken in another order
    # for another batch shape (tests/service/test_batching.py says why 1e-5)
    assert [a["predictions"] for a in together] == [a["predictions"] for a in alone]
    for t, a in zip(together, alone):
        assert t.keys() == a.keys()
        torch.testing.assert_close(
            torch.tensor(t["probabilities"]), torch.tensor(a["probabilities"]), rtol=0, atol=1e-5
        )
    assert passes < 64, f"{passes} forward passes for 64 concurrent requests: nothing was batched"


def _forward_passes(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('jpegweights_batch_size_count{model="mnist-mlp"}'):
            return float(line.split()[-1])
    return 0.0
