"""MiniLM's token embeddings coded by how often each row is looked up (``Calibration.hessians``
gives their row weights; ``tiles.quantize_rows`` turns them into steps), against the same
coding with every row at its range's step. Fidelity on inputs calibration never saw: the 20
sentences of benchmarks/pretrained_fidelity.py, and 20 sentences written here of rarer words
(names, terms of art), where the rows a prior expects least are looked up most. Calibration
inputs: benchmarks/data/sentences.txt. About 10 minutes on 2 cores.

    .venv/bin/python benchmarks/token_rows.py [--only alone settings basis calibrated]

Prints one JSON line per row:

- ``alone``: the token embeddings coded alone (every other tensor float), import's settings
  (flat table, a range per row), at several qualities, without and with the row weights of
  every calibration input;
- ``settings``: the same with ``KEEP_FULL`` (the share of rows at their range's step) and
  ``ZIPF_OFFSET`` (the prior's ``1 / (id + offset)``) moved, one at a time;
- ``basis``: the token embeddings coded alone in their own principal basis instead of the
  DCT's alone (the KLT of their columns: ``(W − μ) V`` coded, ``Ŷ Vᵀ + μ`` decoded, ``V`` the
  covariance's eigenvectors and ``μ`` the column means, both stored in float16 and counted in
  the bytes), without and with the row weights;
- ``calibrated``: ``compress --calibrate benchmarks/data/sentences.txt --min-cosine T`` (error
  compensation on, as by default) with rows by use and without (``--no-rows-by-use``), as
  compare.py codes it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from compare import PRETRAINED, Fidelity, shown  # noqa: E402

from jpegweights.codec import EncodeConfig, decode, encode, tiles  # noqa: E402
from jpegweights.codec import core as codec_core  # noqa: E402
from jpegweights.codec.allocate import allocate  # noqa: E402
from jpegweights.handlers import text  # noqa: E402
from jpegweights.handlers.calibrate import Calibration, read_inputs  # noqa: E402
from jpegweights.handlers.importers import read_state  # noqa: E402

MODEL, WORD = "all-minilm-l6-v2", "embeddings.word_embeddings.weight"
SECTIONS = ("alone", "settings", "basis", "calibrated")
RARE = [
    "Anaximander held that the apeiron was the boundless origin of all things.",
    "The ptarmigan moults into white plumage before the tundra snows.",
    "Her sonata modulates from D-flat major to a remote enharmonic key.",
    "Tocqueville wrote about the tyranny of the majority in Jacksonian America.",
    "The nephrologist adjusted the dialysate after the creatinine spiked.",
    "A quokka photobombed the tourists on Rottnest Island.",
    "The barquentine's mizzenmast splintered in the squall.",
    "Mitochondrial haplogroups trace maternal lineages across millennia.",
    "The Zoroastrian fire temple in Yazd has burned for centuries.",
    "He garnished the bouillabaisse with rouille and gruyère croutons.",
    "Eigenvalues of a Hermitian operator are always real.",
    "The cartographer annotated the isobaths off the Kamchatka peninsula.",
    "Lichens colonise basalt long before mosses or ferns take hold.",
    "The Byzantine iconoclasts whitewashed the mosaics of Nicaea.",
    "A sommelier decanted the Gewürztraminer with theatrical flourish.",
    "The glockenspiel's overtones clashed with the harpsichord.",
    "Pangolins are trafficked for scales made of keratin.",
    "The Ouroboros recurs in Gnostic and alchemical iconography.",
    "Kierkegaard's pseudonymous works resist a single interpretation.",
    "The axolotl regenerates limbs, spinal cord and even parts of its heart.",
]


def emit(**row) -> None:
    print(json.dumps(row, ensure_ascii=False), flush=True)


class Model:
    def __init__(self) -> None:
        self.state, metadata = read_state(ROOT / "models" / MODEL / "model.safetensors")
        self.manifest = {k: json.loads(metadata[k]) for k in ("architecture", "handler") if k in metadata}
        self.common = Fidelity(MODEL, self.state, self.manifest)
        self.rare = Fidelity(MODEL, self.state, self.manifest, sentences=RARE)
        self.request = read_inputs(ROOT / "benchmarks" / "data" / "sentences.txt")
        self.weights = self.token_weights()

    def token_weights(self) -> torch.Tensor:
        """The token embeddings' row weights from every calibration input, as compress codes them."""
        return Calibration(self.manifest, self.state, self.request, None, compensate=True).hessians(every_input=True)[WORD]

    def held_out(self, state: dict) -> dict[str, str]:
        return {"common words": shown(self.common(state)), "rare words": shown(self.rare(state))}

    def encode(self, config: EncodeConfig, hessians: dict | None) -> bytes:
        return encode(self.state, config, self.manifest.get("architecture"), self.manifest.get("handler"), hessians=hessians)


def alone(m: Model, qualities: tuple[int, ...], label: dict | None = None, weighted_only: bool = False) -> None:
    for q in qualities:
        for weighted in (True,) if weighted_only else (False, True):
            coded = codec_core.choose(WORD, m.state[WORD], EncodeConfig(**PRETRAINED).at_quality(q), m.weights if weighted else None)
            emit(section="settings" if label else "alone", quality=q, rows="by use" if weighted else "range steps", **(label or {}), bytes=coded.nbytes, held_out=m.held_out({**m.state, WORD: coded.decode()}))


def settings(m: Model) -> None:
    keep, offset = tiles.KEEP_FULL, text.ZIPF_OFFSET
    try:
        for k in (0.01, 0.1):
            tiles.KEEP_FULL = k
            alone(m, (80, 60), {"keep_full": k, "zipf_offset": offset}, weighted_only=True)
        tiles.KEEP_FULL = keep
        for o in (10, 1000):
            text.ZIPF_OFFSET = o
            m.weights = m.token_weights()
            alone(m, (80, 60), {"keep_full": keep, "zipf_offset": o}, weighted_only=True)
    finally:
        tiles.KEEP_FULL, text.ZIPF_OFFSET = keep, offset
        m.weights = m.token_weights()


def basis(m: Model, qualities: tuple[int, ...]) -> None:
    w = m.state[WORD].double()
    mean = w.mean(0).half().double()
    covariance = torch.cov((w - mean).T)
    eigenvalues, v = torch.linalg.eigh(covariance)
    gain = 0.5 * (covariance.diagonal().log2().sum() - eigenvalues.log2().sum()) / len(eigenvalues)  # bits a value, at high rate
    v = v.half().double()  # as a decoder would hold it
    side = v.numel() * 2 + mean.numel() * 2
    for q in qualities:
        for weighted in (False, True):
            coded = codec_core.choose(WORD, ((w - mean) @ v).float(), EncodeConfig(**PRETRAINED).at_quality(q), m.weights if weighted else None)
            back = (coded.decode().double() @ v.T + mean).float()
            emit(section="basis", quality=q, rows="by use" if weighted else "range steps", coding_gain_bits=round(float(gain), 3), bytes=coded.nbytes + side, held_out=m.held_out({**m.state, WORD: back}))


def calibrated(m: Model, targets: tuple[float, ...]) -> None:
    measure = Calibration(m.manifest, m.state, m.request, "cosine", compensate=True)
    for target in targets:
        for weighted in (False, True):  # as compress --calibrate [--no-rows-by-use] does
            found = allocate(m.state, EncodeConfig(**PRETRAINED), measure, 1 - target, hessians=measure.hessians(lookups=weighted))
            data = m.encode(found.config, measure.hessians(every_input=True, lookups=weighted))
            emit(section="calibrated", target=target, rows="by use" if weighted else "range steps", bytes=len(data), ratio=round(sum(t.numel() * 4 for t in m.state.values()) / len(data), 2), token_quality=found.config.quality_of(WORD), held_out=m.held_out(decode(data)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    args = p.parse_args()
    m = Model()
    if "alone" in args.only:
        alone(m, (90, 80, 70, 60, 50, 40))
    if "settings" in args.only:
        settings(m)
    if "basis" in args.only:
        basis(m, (90, 70, 50))
    if "calibrated" in args.only:
        calibrated(m, (0.996, 0.995))


if __name__ == "__main__":
    main()
