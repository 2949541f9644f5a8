"""The two pretrained models (MobileNetV2, all-MiniLM-L6-v2) on a real uvicorn, as `make serve`
serves them: every input kind, tritonclient with and without binary data, the client and the
CLI rebuilding them from /weights and answering as the server does."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import torch
import pytest

from jpegweights.cli.main import main
from jpegweights.client import Client, ModelError
from tests.conftest import ROOT, bundled_store, running_server

STORE = ROOT / "models"
CAT = ROOT / "examples" / "cat.jpg"
CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}  # ImageNet 281-285
SENTENCES = ["A cat sits on the mat.", "A kitten rests on a rug.", "Stock markets fell sharply on Monday."]

pytestmark = pytest.mark.skipif(
    not all((STORE / m / "model.jpw").is_file() for m in ("mobilenet_v2", "all-minilm-l6-v2")),
    reason="the pretrained models are not imported: `make pretrained` (make test does it)",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = bundled_store(tmp_path_factory.mktemp("store"))
    with running_server(tmp_path_factory.mktemp("cache"), model_dir=store) as url:
        yield url


def test_the_store_serves_all_four_models_with_mnist_mlp_the_default(server):
    listing = httpx.get(f"{server}/models").json()
    assert listing["default"] == "mnist-mlp" and not listing["failed"]
    handlers = {m["name"]: m["handler"] for m in listing["models"]}
    assert handlers == {
        "mnist-mlp": "image-classification",
        "mnist-cnn": "image-classification",
        "mobilenet_v2": "image-classification",
        "all-minilm-l6-v2": "text-embedding",
    }


def test_a_cat_photo_by_multipart_and_by_base64_json(server):
    r = httpx.post(f"{server}/predict", params={"model": "mobilenet_v2"}, files={"file": CAT.open("rb")})
    assert r.status_code == 200, r.text
    multipart = r.json()
    assert multipart["labels"][0] in CAT_CLASSES and len(multipart["top_k"][0]) == 5
    body = {"model": "mobilenet_v2", "images": [base64.b64encode(CAT.read_bytes()).decode()], "top_k": 2}
    answer = httpx.post(f"{server}/predict", json=body).json()
    assert answer["top_k"][0] == multipart["top_k"][0][:2]


@pytest.mark.parametrize(
    "kwargs, status, message",
    [
        (
            {"params": {"model": "mobilenet_v2"}, "files": {"file": ("x.jpg", b"not a jpeg")}},
            422,
            "images[0] is not a readable JPEG, PNG or WebP image",
        ),
        (
            {"params": {"model": "mobilenet_v2"}, "json": {"inputs": [[[0] * 224] * 224]}},
            422,
            "each sample must be 3x224x224 or 150528, got 224x224",
        ),
        ({"params": {"model": "mobilenet_v2"}, "json": {"text": ["a cat"]}}, 422, "this model classifies images"),
        (
            {"params": {"model": "all-minilm-l6-v2"}, "json": {"text": ["word " * 300], "truncate": False}},
            422,
            "more than the model's 256 tokens",
        ),
        (
            {"params": {"model": "all-minilm-l6-v2"}, "json": {"text": ["a"], "top_k": 3}},
            422,
            "takes no option(s) ['top_k']",
        ),
        ({"params": {"model": "nope"}, "json": {"text": ["a"]}}, 404, "unknown model 'nope'"),
        (
            {"params": {"model": "mnist-mlp"}, "json": {"model": "mnist-cnn", "inputs": [[0] * 784]}},
            400,
            "names two models",
        ),
    ],
)
def test_bad_requests_are_4xx_naming_the_problem(server, kwargs, status, message):
    r = httpx.post(f"{server}/predict", **kwargs)
    assert r.status_code == status and message in r.json()["detail"], r.text


def test_text_embeddings_pairs_and_truncation(server):
    r = httpx.post(
        f"{server}/predict", params={"model": "all-minilm-l6-v2"}, json={"text": [*SENTENCES, "word " * 300]}
    ).json()
    vectors = np.array(r["embeddings"])
    assert vectors.shape == (4, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert r["truncated"] == [False, False, False, True]
    pairs = [[SENTENCES[0], SENTENCES[1]], [SENTENCES[0], SENTENCES[2]]]
    similar, unrelated = httpx.post(f"{server}/predict", json={"model": "all-minilm-l6-v2", "pairs": pairs}).json()[
        "similarities"
    ]
    assert similar > 0.5 > 0.2 > unrelated
    assert similar == pytest.approx(float(vectors[0] @ vectors[1]), abs=1e-5)


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_images_and_text(server, binary):
    import tritonclient.http as triton

    c = triton.InferenceServerClient(server.removeprefix("http://"))
    image = triton.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(
        np.array([CAT.read_bytes() if binary else base64.b64encode(CAT.read_bytes())], dtype=object), binary_data=binary
    )
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("labels", "probabilities")]
    result = c.infer("mobilenet_v2", [image], outputs=outputs)
    label = result.as_numpy("labels")[0]  # bytes from binary outputs, str from JSON ones
    assert (label.decode() if binary else label) in CAT_CLASSES and result.as_numpy("probabilities").shape == (1, 1000)
    text = triton.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([s.encode() for s in SENTENCES[:2]], dtype=object), binary_data=binary)
    vectors = c.infer(
        "all-minilm-l6-v2", [text], outputs=[triton.InferRequestedOutput("embedding", binary_data=binary)]
    ).as_numpy("embedding")
    served = httpx.post(f"{server}/predict", json={"model": "all-minilm-l6-v2", "text": SENTENCES[:2]}).json()[
        "embeddings"
    ]
    assert vectors.shape == (2, 384) and np.allclose(vectors, served, atol=1e-6)


def test_the_client_rebuilds_both_from_weights_and_answers_as_the_server(server, tmp_path):
    with Client(server, cache_dir=tmp_path) as c:
        mobilenet, minilm = c.load("mobilenet_v2"), c.load("all-minilm-l6-v2")
        remote_image = c.predict(images=[CAT], model="mobilenet_v2")
        remote_text = c.predict(text=SENTENCES, model="all-minilm-l6-v2")
    local = mobilenet.predict([CAT])
    assert local["labels"] == remote_image["labels"]
    assert np.allclose(
        [t["score"] for t in local["top_k"][0]], [t["score"] for t in remote_image["top_k"][0]], atol=1e-5
    )
    assert np.allclose(minilm.predict(SENTENCES)["embeddings"], remote_text["embeddings"], atol=1e-5)
    with pytest.raises(ModelError, match="this model embeds text"):
        minilm.predict(np.zeros((1, 4)))


def test_jpegweights_run_works_from_the_file_alone(capsys):
    assert main(["run", str(STORE / "mobilenet_v2" / "model.jpw"), str(CAT)]) == 0
    path, index, label, score = capsys.readouterr().out.strip().split("\t")
    assert label in CAT_CLASSES and 281 <= int(index) <= 285
    assert main(["run", str(STORE / "all-minilm-l6-v2" / "model.jpw"), "some text", "more text"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert len(answer["embeddings"]) == 2 and len(answer["embeddings"][0]) == 384


def test_served_packages_answer_like_the_float_weights():
    """The served packages against their float source, through the same handler
    (benchmarks/pretrained_fidelity.py prints these figures; docs/handlers.md has them)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pretrained_fidelity", ROOT / "benchmarks" / "pretrained_fidelity.py")
    fidelity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fidelity)
    photos = sorted((ROOT / "tests" / "data" / "photos").glob("*.jpg"))
    agreement = fidelity.mobilenet_agreement(STORE / "mobilenet_v2", photos)
    assert agreement["views_sure"] >= 20 and agreement["top1_agreement_sure"] >= 0.85, agreement
    mean, low = fidelity.text_cosine(STORE / "all-minilm-l6-v2")
    assert mean >= 0.995 and low >= 0.99, (mean, low)  # measured 0.99677 and 0.99577 (quality 90, flat table)


def test_batched_and_one_at_a_time_answers_agree_within_float_tolerance():
    """What the batcher does (collate several requests' rows, one forward pass, split) against
    each request alone: equal to 1e-5 (CPU kernels sum in another order for another batch)."""
    from jpegweights import handlers
    from jpegweights.codec import load_package

    for model, requests in (
        (
            "mobilenet_v2",
            [
                handlers.Request(images=[p.read_bytes()])
                for p in sorted((ROOT / "tests" / "data" / "photos").glob("*.jpg"))[:4]
            ],
        ),
        ("all-minilm-l6-v2", [handlers.Request(text=[s]) for s in SENTENCES]),
    ):
        state, manifest = load_package(STORE / model / "model.jpw")
        h = handlers.load(manifest, state)
        inputs = [h.decode_request(r) for r in requests]
        together = handlers.split(h.run(handlers.collate(inputs)), [1] * len(inputs))
        for x, joined in zip(inputs, together):
            alone = h.run(x)
            for key in alone:
                assert torch.allclose(alone[key].float(), joined[key].float(), atol=1e-5), (model, key)


def test_imported_packages_code_their_matrices_with_the_flat_table_and_small_tensors_in_float16():
    """`jpegweights import` defaults to the flat table and float16 raw tensors (docs/codec.md#deep-networks),
    in the compact container (format version 4: a safetensors file of two tensors)."""
    from safetensors.torch import load

    from jpegweights.codec.container import PACKED_VERSION, read

    for name in ("mobilenet_v2", "all-minilm-l6-v2"):
        data = (STORE / name / "model.jpw").read_bytes()
        stored, manifest = read(data)
        assert manifest["version"] == PACKED_VERSION and len(load(data)) == 2, name
        entries = manifest["tensors"].values()
        tables = {e["qtable"] for e in entries if e["coding"] == "jpeg"}
        assert tables == {"flat"}, (name, tables)
        raw = {stored[e["key"]].dtype for e in entries if e["coding"] == "raw" and e["dtype"] == "F32"}
        assert raw == {torch.float16}, (name, raw)
