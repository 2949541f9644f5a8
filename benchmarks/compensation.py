"""Error compensation (``encode(..., hessians=)``, on by default in ``compress --calibrate``),
measured on inputs it never saw, as benchmarks/compare.py measures (held-out views or sentences;
calibration inputs as there: the even-numbered photos' views, benchmarks/data/sentences.txt).

    .venv/bin/python benchmarks/compensation.py [--models mobilenet_v2 all-minilm-l6-v2]
        [--only uniform damping calibrated padding]

Prints one JSON line per row:

- ``uniform``: import's settings at one quality for every tensor, without and with
  compensation fitted on all the calibration inputs: the same bytes, the output error moved;
- ``damping``: λ (a fraction of the second moment's mean diagonal) at one quality;
- ``calibrated``: ``compress --calibrate`` at one target, measuring each allocation with
  compensation fitted on the very inputs it is measured on, against the split it makes (fitted on
  the first half, measured on the second, the package coded with all): what the first promises
  and what other inputs get; and the split's qualities coded with the first half's H alone;
- ``padding`` (MiniLM): calibration text of mixed lengths, the 40 sentences with 4 paragraphs
  among them (each 10 of the sentences joined), so that a batch is mostly padding: compensation
  with the padding left out of the second moments (as built) and left in (as before).

Compensation alone: MiniLM's token embeddings keep their range steps here (``lookups=False``,
``compress(..., rows_by_use=False)``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

SECTIONS = ("uniform", "damping", "calibrated", "padding")
SETTINGS = {  # model: (metric, uniform qualities, damping quality, calibrated target)
    "mobilenet_v2": ("kl", (95, 90, 85, 75), 85, 0.015),
    "all-minilm-l6-v2": ("cosine", (90, 85, 80), 80, 0.996),
}


def calibration_inputs(model: str, tmp: Path) -> Path:
    if model != "mobilenet_v2":
        return ROOT / "benchmarks" / "data" / "sentences.txt"
    from pretrained_fidelity import views

    for photo in sorted((ROOT / "tests" / "data" / "photos").glob("*.jpg"))[0::2]:
        for i, view in enumerate(views(photo)):
            (tmp / f"{photo.stem}-{i}.png").write_bytes(view)
    return tmp


def main() -> None:
    from compare import PRETRAINED, Fidelity, shown

    from jpegweights.codec import EncodeConfig, allocate, compensate, decode, encode
    from jpegweights.handlers import Request
    from jpegweights.handlers.importers import read_state
    from jpegweights.pipeline import Calibration, compress, read_inputs

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--only", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    args = p.parse_args()
    for model in args.models:
        metric, qualities, damping_q, target = SETTINGS[model]
        state, metadata = read_state(ROOT / "models" / model / "model.safetensors")
        manifest = {k: json.loads(metadata[k]) for k in ("architecture", "handler") if k in metadata}
        fidelity = Fidelity(model, state, manifest)

        def package(config: EncodeConfig, hessians: dict | None = None) -> bytes:
            return encode(state, config, manifest.get("architecture"), manifest.get("handler"), hessians=hessians)

        def row(kind: str, setting: str, data: bytes, **extra) -> None:
            print(
                json.dumps(
                    {
                        "model": model,
                        "row": kind,
                        "setting": setting,
                        "bytes": len(data),
                        "held_out": shown(fidelity(decode(data))),
                        **extra,
                    },
                    ensure_ascii=False,
                ),
                flush=True,
            )

        with tempfile.TemporaryDirectory() as tmp:
            request = read_inputs(calibration_inputs(model, Path(tmp)))
            split = Calibration(manifest, state, request, metric, compensate=True)
            every = split.hessians(every_input=True, lookups=False)
            for q in qualities if "uniform" in args.only else ():
                config = EncodeConfig(**PRETRAINED).at_quality(q)
                row("uniform", f"q{q}", package(config))
                row("uniform", f"q{q} compensated", package(config, every))
            config = EncodeConfig(**PRETRAINED).at_quality(damping_q)
            default = compensate.DAMP
            for damp in (0.01, 0.1, 1.0) if "damping" in args.only else ():
                compensate.DAMP = damp
                row("damping", f"q{damping_q}, λ {damp}", package(config, every))
            compensate.DAMP = default
            if "padding" in args.only and request.text:
                text = request.text
                paragraphs = [" ".join(text[i : i + 10]) for i in range(0, 40, 10)]
                mixed = Calibration(
                    manifest,
                    state,
                    Request(text=text[:20] + paragraphs[:2] + text[20:] + paragraphs[2:]),
                    None,
                    compensate=True,
                )
                left_out = mixed.hessians(every_input=True, lookups=False)
                mixed.handler.positions = lambda batch: None  # as before: every position counted
                left_in = mixed.hessians(every_input=True, lookups=False)
                for q in qualities[1:]:
                    config = EncodeConfig(**PRETRAINED).at_quality(q)
                    row(
                        "padding",
                        f"q{q}, 4 paragraphs among the sentences, padding left out",
                        package(config, left_out),
                    )
                    row("padding", f"q{q}, 4 paragraphs among the sentences, padding left in", package(config, left_in))
            if "calibrated" not in args.only:
                continue

            limit = target if metric == "kl" else 1 - target
            # every input twice: the "first half" fitted on is then every input, measured on again
            twice = Request(images=request.images * 2) if request.images else Request(text=request.text * 2)
            same = Calibration(manifest, state, twice, metric, compensate=True)
            # a variant compress does not make: the search measured on the inputs compensation fits
            found = allocate(state, EncodeConfig(**PRETRAINED), same, limit, hessians=every)
            measured = round(found.distortion if metric == "kl" else 1 - found.distortion, 5)
            row(
                "calibrated",
                f"target {target}: fitted on the inputs measured on",
                package(found.config, every),
                measured=measured,
            )
            made = compress(state, EncodeConfig(**PRETRAINED), data=request, target=target, metric=metric,
                            rows_by_use=False, cache_dir=Path(tmp) / "cache", architecture=manifest.get("architecture"),
                            handler=manifest.get("handler"))  # fmt: skip
            row(
                "calibrated",
                f"target {target}: fitted on one half, measured on the other (compress --calibrate)",
                made.data,
                measured=round(made.fidelity, 5),
            )
            row(
                "calibrated",
                f"target {target}: the same qualities, coded with the first half's H only",
                package(made.config, split.hessians(lookups=False)),
            )


if __name__ == "__main__":
    main()
