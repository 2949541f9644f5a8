"""How closely the served packages of the pretrained models answer like their float weights.

    python benchmarks/pretrained_fidelity.py [--store models]

MobileNetV2: top-1 agreement between the float weights and the package on the photos in
tests/data/photos, each also flipped and cropped at two scales (6 views per photo), through the
same handler (so preprocessing is identical); overall, and on the views the float model
classifies with a top-1 probability of at least 0.5. MiniLM: cosine between the float model's and the
package's embeddings of the sentences below. Both read the store's folders (``model.jpw`` and
the float ``model.safetensors`` beside it), as `make pretrained` writes them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = [
    "A cat sits on the mat.", "A kitten rests on a rug.", "Stock markets fell sharply on Monday.",
    "The central bank raised interest rates again.", "How do I reset my password?",
    "I forgot the password to my account.", "The recipe needs two eggs and a cup of flour.",
    "Bake the cake at 180 degrees for forty minutes.", "The train to Paris leaves at nine.",
    "Our flight was delayed by three hours.", "Photosynthesis turns light into chemical energy.",
    "Mitochondria are the powerhouse of the cell.", "He scored twice in the second half.",
    "The match ended in a draw.", "Please close the window, it is cold.", "It is freezing in here.",
    "JPEG compresses images with the discrete cosine transform.", "Neural network weights can be quantized.",
    "The library opens at eight on weekdays.", "She plays the violin in an orchestra.",
]  # fmt: skip


def float_weights(folder: Path) -> dict:
    """A store folder's float source (``model.safetensors``)."""
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def handler_pair(folder: Path):
    """(handler on the float weights, handler on the package) of a store folder."""
    from jpegweights import handlers
    from jpegweights.codec import load_package

    state, manifest = load_package(folder / "model.jpw")
    return handlers.load(manifest, float_weights(folder)), handlers.load(manifest, state)


def photo_views(photos: list[Path]):
    """A request with every view of each photo."""
    from jpegweights.handlers import Request

    return Request(images=[v for p in photos for v in views(p)])


def views(path: Path) -> list[bytes]:
    """The photo, mirrored, and centre-cropped to 80% and 60%, each as a PNG (6 views)."""
    from jpegweights.pipeline.calibrate import views as of

    return of(path.read_bytes())


def mobilenet_agreement(folder: Path, photos: list[Path]) -> dict[str, float]:
    """Top-1 agreement on every view, and on the views the float model is sure of (top-1
    probability ≥ 0.5: many of the photos are textures or objects ImageNet has no class for,
    where the top two classes are a coin toss apart)."""
    from jpegweights.handlers import Limits

    reference, served = handler_pair(folder)
    request, limits = photo_views(photos), Limits(max_samples=10_000)
    a = reference.run(reference.decode_request(request, limits))
    b = served.run(served.decode_request(request, limits))
    same = a["predictions"] == b["predictions"]
    sure = a["probabilities"].max(1).values >= 0.5
    return {
        "top1_agreement": round(float(same.float().mean()), 4),
        "views": len(same),
        "top1_agreement_sure": round(float(same[sure].float().mean()), 4),
        "views_sure": int(sure.sum()),
    }


def text_cosine(folder: Path) -> tuple[float, float]:
    from jpegweights.handlers import Request

    reference, served = handler_pair(folder)
    request = Request(text=SENTENCES)
    a = reference.run(reference.decode_request(request))["embedding"]
    b = served.run(served.decode_request(request))["embedding"]
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    return float(cos.mean()), float(cos.min())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, default=ROOT / "models")
    args = p.parse_args()
    photos = sorted((ROOT / "tests" / "data" / "photos").glob("*.jpg"))
    agreement = mobilenet_agreement(args.store / "mobilenet_v2", photos)
    mean, low = text_cosine(args.store / "all-minilm-l6-v2")
    sizes = {m: (args.store / m / "model.jpw").stat().st_size for m in ("mobilenet_v2", "all-minilm-l6-v2")}
    print(json.dumps({
        "mobilenet_v2": {**agreement, "package_bytes": sizes["mobilenet_v2"]},
        "all-minilm-l6-v2": {"mean_cosine": round(mean, 5), "min_cosine": round(low, 5), "sentences": len(SENTENCES),
                             "package_bytes": sizes["all-minilm-l6-v2"]},
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
