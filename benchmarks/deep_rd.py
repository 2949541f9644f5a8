"""Rate-distortion of the codec's settings on the pretrained models (issue 11's measurements).

    python benchmarks/deep_rd.py [--model mobilenet_v2|all-minilm-l6-v2] [--config JSON ...]

For each EncodeConfig (JSON keyword arguments; a default grid without ``--config``) it encodes
the store folder's float weights (``models/<model>/model.safetensors``, as `make pretrained`
writes them), decodes the package and measures it against the float model through the same
handler: MobileNetV2's mean KL divergence of the output distribution and top-1 agreement on
84 views of the photos in tests/data/photos; MiniLM's mean and minimum cosine of the
sentence embeddings of benchmarks/pretrained_fidelity.py's sentences. The ratio counts the
whole file against float32. Prints one JSON line per config.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

GRID = [
    {"coding": "int8"},
    *({"quality": q, "ranges": "row", "qtable": t} for t in ("flat", "auto") for q in (90, 95, 98)),
]


def main() -> None:
    from compare import Fidelity

    from jpegweights.codec import EncodeConfig, decode, encode, load_manifest
    from pretrained_fidelity import float_weights

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilenet_v2")
    p.add_argument("--store", type=Path, default=ROOT / "models")
    p.add_argument("--config", action="append", type=json.loads, help="EncodeConfig keywords as JSON (repeatable)")
    args = p.parse_args()
    folder = args.store / args.model
    manifest = load_manifest((folder / "model.jpw").read_bytes())
    state = float_weights(folder)
    float_bytes = sum(t.numel() * 4 for t in state.values())
    fidelity = Fidelity(args.model, state, manifest, photos=slice(None))  # every photo's views
    for kwargs in args.config or GRID:
        t0 = time.perf_counter()
        data = encode(state, EncodeConfig(**kwargs), manifest.get("architecture"), manifest.get("handler"))
        seconds = time.perf_counter() - t0
        row = {
            "model": args.model,
            "config": kwargs,
            "bytes": len(data),
            "ratio": round(float_bytes / len(data), 3),
            "encode_s": round(seconds, 2),
        }
        print(json.dumps(row | {k: round(v, 5) for k, v in fidelity(decode(data)).items()}), flush=True)


if __name__ == "__main__":
    main()
