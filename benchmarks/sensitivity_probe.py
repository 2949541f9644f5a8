"""A probe for issue 11's bit budget: per-tensor quality chosen by measured sensitivity.

    python benchmarks/sensitivity_probe.py [--max-kl 0.02] [--qualities 98 95 90 85]

MobileNetV2 from the store (`make pretrained`). For every matrix that the default config codes
as JPEG, and each of ``--qualities`` (default 98, 95, 90, 85; flat table, a range per row),
it codes that tensor alone and measures the model's mean KL divergence against the float model
on the views (benchmarks/deep_rd.py's) of 7 of the 14 photos in tests/data/photos, and the
tensor's bytes. Treating the tensors' KL increases as additive, it then lowers qualities
greedily (the most bytes saved per unit of KL first) until the sum would pass ``--max-kl``,
encodes the whole model with that ``quality_for`` and measures it, and uniform quality 95, on
those views and on the views of the other 7 photos, which played no part in the choice.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    from jpegweights import handlers
    from jpegweights.codec import EncodeConfig, decode, encode, load_manifest
    from jpegweights.codec.core import choose, encode_jpeg
    from jpegweights.handlers import Limits
    from pretrained_fidelity import float_weights, mean_kl, photo_views  # noqa: E402

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-kl", type=float, default=0.02)
    p.add_argument("--qualities", type=int, nargs="+", default=[98, 95, 90, 85], help="highest first")
    p.add_argument("--store", type=Path, default=ROOT / "models")
    args = p.parse_args()
    qualities = sorted(set(args.qualities), reverse=True)
    folder = args.store / "mobilenet_v2"
    manifest = load_manifest((folder / "model.jpw").read_bytes())
    state = float_weights(folder)
    reference = handlers.load(manifest, state)
    photos = sorted((ROOT / "tests" / "data" / "photos").glob("*.jpg"))
    sets = {}  # views of alternate photos: one half to choose qualities on, the other to measure
    for part, chosen_photos in (("calibration", photos[0::2]), ("held_out", photos[1::2])):
        batch = reference.decode_request(photo_views(chosen_photos), Limits(max_samples=10_000))
        sets[part] = (batch, reference.run(batch)["probabilities"])

    def kl_of(s: dict[str, torch.Tensor], part: str = "calibration") -> float:
        batch, expected = sets[part]
        return mean_kl(expected, handlers.load(manifest, s).run(batch)["probabilities"])

    base = EncodeConfig(quality=qualities[0], qtable="flat", ranges="row")
    names = [n for n, t in state.items() if choose(n, t, base).entry["coding"] == "jpeg"]
    curve: dict[str, dict[int, tuple[int, float]]] = {}
    for n in names:
        curve[n] = {}
        for q in qualities:
            coded = encode_jpeg(n, state[n], q, "flat", ranges="row")
            curve[n][q] = (coded.nbytes, kl_of({**state, n: coded.decode()}))
        print(json.dumps({"tensor": n, "shape": list(state[n].shape), "curve": {q: [b, round(k, 5)] for q, (b, k) in curve[n].items()}}), flush=True)
    chosen = {n: qualities[0] for n in names}
    budget = args.max_kl - sum(curve[n][chosen[n]][1] for n in names)
    while True:
        steps = []
        for n in names:
            i = qualities.index(chosen[n])
            if i + 1 < len(qualities):
                (b0, k0), (b1, k1) = curve[n][qualities[i]], curve[n][qualities[i + 1]]
                steps.append(((b0 - b1) / max(k1 - k0, 1e-9), n, qualities[i + 1], k1 - k0))
        steps = [s for s in steps if s[3] <= budget]
        if not steps:
            break
        _, n, q, dk = max(steps)
        chosen[n], budget = q, budget - dk
    float_bytes = sum(t.numel() * 4 for t in state.values())
    for label, config in (("uniform q95", EncodeConfig(quality=95, qtable="flat", ranges="row")), ("allocated", EncodeConfig(quality=qualities[0], qtable="flat", ranges="row", quality_for=tuple(chosen.items())))):
        data = encode(state, config, manifest.get("architecture"), manifest.get("handler"))
        decoded = decode(data)
        print(json.dumps({"setting": label, "bytes": len(data), "ratio": round(float_bytes / len(data), 3), "kl_calibration": round(kl_of(decoded), 5), "kl_held_out": round(kl_of(decoded, "held_out"), 5)}), flush=True)
    print(json.dumps({"qualities": chosen}))


if __name__ == "__main__":
    main()
