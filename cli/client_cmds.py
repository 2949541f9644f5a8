"""``pull``, ``push``, ``predict``, ``run``, ``models``: the client from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jpegweights.client import JpegWeightsError

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (JpegWeightsError,)


def register(sub: argparse._SubParsersAction) -> None:
    def server(p):
        p.add_argument("url", help="server base URL, e.g. http://127.0.0.1:8000")
        p.add_argument("--token", help="bearer token (the admin token for push)")
        p.add_argument("--cache-dir", type=Path, help="local package cache (default: ~/.cache/jpegweights/client or $JPEGWEIGHTS_CACHE)")

    p = sub.add_parser("pull", help="download a model's package (cached, verified, resumable)")
    server(p)
    p.add_argument("--model", "-m")
    p.add_argument("--quality", "-q", type=int)
    p.add_argument("-o", "--output", type=Path, help="also copy the package here")
    p.set_defaults(func=pull)

    p = sub.add_parser("push", help="upload a package (.jpw, or safetensors with an architecture) to serve as --name")
    server(p)
    p.add_argument("package", type=Path)
    p.add_argument("--name", "-m", required=True)
    p.add_argument("--version", help="default: the served version + 1")
    p.set_defaults(func=push)

    p = sub.add_parser("predict", help="classify PNG/JPEG images on the server")
    server(p)
    p.add_argument("--model", "-m")
    p.add_argument("images", nargs="+", type=Path)
    p.set_defaults(func=predict)

    p = sub.add_parser("run", help="classify PNG/JPEG images locally with a downloaded .jpw")
    p.add_argument("package", type=Path)
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)

    p = sub.add_parser("models", help="list a server's models")
    server(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=models)


def _client(args):
    from jpegweights.client import Client

    return Client(args.url, token=args.token, cache_dir=args.cache_dir)


def pull(args: argparse.Namespace) -> int:
    with _client(args) as c:
        path = c.download(args.model, args.quality, dest=args.output)
    print(f"{path} ({path.stat().st_size} bytes, verified)")
    return 0


def push(args: argparse.Namespace) -> int:
    with _client(args) as c:
        model = c.push(args.package, args.name, args.version)
    print(f"{model['name']} version {model['version']}: serving ({model['package_bytes']} bytes)")
    return 0


def predict(args: argparse.Namespace) -> int:
    with _client(args) as c:
        answer = c.predict(images=args.images, model=args.model)
    for path, label, probs in zip(args.images, answer["predictions"], answer["probabilities"]):
        print(f"{path}\t{label}\t{max(probs):.3f}")
    return 0


def run(args: argparse.Namespace) -> int:
    from jpegweights import codec
    from jpegweights.client import PackagedModel, load_images
    from jpegweights.client.errors import CodecError

    data = args.package.read_bytes()
    try:
        model = PackagedModel.build(codec.load_manifest(data), codec.decode(data, args.device), args.device)
    except codec.CodecError as exc:
        raise CodecError(f"{args.package}: {exc}") from exc
    import torch

    with torch.inference_mode():
        probs = model(load_images(args.images, model.input_shape)).softmax(1)
    for path, p in zip(args.images, probs):
        print(f"{path}\t{int(p.argmax())}\t{float(p.max()):.3f}")
    return 0


def models(args: argparse.Namespace) -> int:
    with _client(args) as c:
        listing = c.models()
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    print(f"{'model':<16} {'version':<8} {'quality':>7} {'package bytes':>14} {'float32 bytes':>14}  input")
    for m in listing:
        print(f"{m['name']:<16} {m['version']:<8} {m['quality']:>7} {m['package_bytes']:>14} {m['uncompressed_bytes']:>14}  {m['input_shape']}")
    return 0
