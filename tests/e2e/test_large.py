"""all-mpnet-base-v2 (110 M parameters), end to end: served, shipped by /weights, rebuilt by the
client and by `jpegweights run`, answering as the server and as its float weights do. Opt-in:
`make pretrained-large` fetches and imports it (400 MB); without it, these tests skip."""

from __future__ import annotations

import importlib.util
import json

import httpx
import numpy as np
import pytest

from jpegweights.cli.main import main
from jpegweights.client import Client
from tests.conftest import ROOT, running_server

NAME = "all-mpnet-base-v2"
FOLDER = ROOT / "models" / NAME
SENTENCES = ["A cat sits on the mat.", "A kitten rests on a rug.", "Stock markets fell sharply on Monday."]

pytestmark = pytest.mark.skipif(
    not (FOLDER / "model.jpw").is_file(), reason=f"{NAME} is not imported: `make pretrained-large` (opt-in, 400 MB)"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    (store / NAME).symlink_to(FOLDER, target_is_directory=True)
    with running_server(tmp_path_factory.mktemp("cache"), model_dir=store) as url:
        yield url


def test_it_is_served_shipped_and_rebuilt_by_the_client_answering_as_the_server(server, tmp_path):
    listing = httpx.get(f"{server}/models").json()
    (model,) = listing["models"]
    assert model["name"] == NAME and model["handler"] == "text-embedding" and not listing["failed"]
    served = httpx.post(f"{server}/predict", json={"text": SENTENCES}, timeout=120).json()["embeddings"]
    with Client(server, cache_dir=tmp_path) as c:
        local = c.load(NAME)
    vectors = np.array(local.predict(SENTENCES)["embeddings"])
    assert vectors.shape == (3, 768) and np.allclose(vectors, served, atol=1e-5)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > unrelated + 0.3  # a cat on a mat is nearer a kitten on a rug than the markets


def test_jpegweights_run_works_from_the_file_alone(capsys):
    assert main(["run", str(FOLDER / "model.jpw"), *SENTENCES[:2]]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert len(answer["embeddings"]) == 2 and len(answer["embeddings"][0]) == 768


def test_the_served_package_answers_like_the_float_weights():
    spec = importlib.util.spec_from_file_location("pretrained_fidelity", ROOT / "benchmarks" / "pretrained_fidelity.py")
    fidelity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fidelity)
    mean, low = fidelity.text_cosine(FOLDER)  # its 20 sentences, through the same handler
    assert mean >= 0.99 and low >= 0.98, (mean, low)  # the import's report: 0.9947 on 40 other sentences
