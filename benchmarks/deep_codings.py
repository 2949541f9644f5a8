"""Two codings issue 11 proposed, measured before building them into the format: outliers kept
apart (sparse) and a stored row permutation that makes the image smoother.

    .venv/bin/python benchmarks/deep_codings.py [--quality 90]

For every matrix that import's settings code as JPEG (flat table, a range per row, ``--quality``)
in the store's MobileNetV2 and MiniLM, each variant is applied to every such matrix at once, and
the whole model is measured as benchmarks/compare.py does (held-out views or sentences):

- ``baseline``: as served;
- ``outliers kσ``: the codec's ``outliers=k``: each row's range clipped to mean ± k·std, and
  the values beyond stored apart, at 6 bytes each (an int32 position and a float16 value);
- ``rows sorted``: rows reordered along their first principal component before coding (the
  reader would undo it), plus 4 bytes per row for the permutation.

Bytes are the JPEG-coded matrices' (streams, scales, offsets, plus the variant's extra bytes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def coded_matrix(t: torch.Tensor, quality: int, outliers: float | None = None) -> tuple[int, torch.Tensor]:
    from jpegweights.codec.core import encode_jpeg

    coded = encode_jpeg("w", t, quality, "flat", ranges="row", outliers=outliers)
    return coded.nbytes, coded.decode()


def sorted_rows(t: torch.Tensor, quality: int) -> tuple[int, torch.Tensor]:
    rows = t.reshape(t.shape[0], -1)
    centred = rows - rows.mean(0)
    _, _, v = torch.linalg.svd(centred.double(), full_matrices=False)
    order = torch.argsort(centred.double() @ v[0])
    nbytes, back = coded_matrix(rows[order].reshape(t.shape), quality)
    out = torch.empty_like(rows)
    out[order] = back.reshape(rows.shape)
    return nbytes + 4 * rows.shape[0], out.reshape(t.shape)


def main() -> None:
    from compare import Fidelity, shown

    from jpegweights.codec import EncodeConfig
    from jpegweights.codec.core import choose
    from jpegweights.handlers.importers import read_state

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quality", type=int, default=90)
    args = p.parse_args()
    config = EncodeConfig(quality=args.quality, qtable="flat", ranges="row", raw_dtype="float16")
    variants = {
        "baseline": lambda t: coded_matrix(t, args.quality),
        **{f"outliers {k:g}σ": lambda t, k=k: coded_matrix(t, args.quality, k) for k in (3.0, 4.0, 6.0)},
        "rows sorted": lambda t: sorted_rows(t, args.quality),
    }
    for model in ("mobilenet_v2", "all-minilm-l6-v2"):
        folder = ROOT / "models" / model
        state, metadata = read_state(folder / "model.safetensors")
        manifest = {k: json.loads(metadata[k]) for k in ("architecture", "handler") if k in metadata}
        fidelity = Fidelity(model, state, manifest)
        names = [n for n, t in state.items() if choose(n, t, config).entry["coding"] == "jpeg"]
        for label, code in variants.items():
            nbytes, decoded = 0, dict(state)
            for n in names:
                b, decoded[n] = code(state[n])
                nbytes += b
            print(json.dumps({"model": model, "variant": label, "matrices": len(names), "bytes": nbytes, "fidelity": shown(fidelity(decoded))}, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
