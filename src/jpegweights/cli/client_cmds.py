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
        p.add_argument(
            "--cache-dir",
            type=Path,
            help="local package cache (default: ~/.cache/jpegweights/client or $JPEGWEIGHTS_CACHE)",
        )

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

    p = sub.add_parser("predict", help="run a model on the server: image files, or texts with --text")
    server(p)
    p.add_argument("--model", "-m", help="needed when several served models take the items' kind (images, text)")
    p.add_argument("items", nargs="+", help="image files (or texts, with --text)")
    p.add_argument("--text", action="store_true", help="the items are texts to embed")
    p.add_argument("--top-k", type=int, help="image models: labels per image")
    p.add_argument("--json", action="store_true", help="print the server's whole answer")
    p.set_defaults(func=predict)

    p = sub.add_parser(
        "run", help="run a .jpw package locally, from a file or a server's URL: image files, or texts for a text model"
    )
    p.add_argument(
        "package",
        help="a .jpw file, or a server's base URL: its package is then decoded as it downloads (and cached)",
    )
    p.add_argument("items", nargs="+", help="image files for image models, texts for text models")
    p.add_argument("--model", "-m", help="with a URL: the model (default: the server's default)")
    p.add_argument("--quality", "-q", type=int, help="with a URL: the quality to download")
    p.add_argument("--token", help="with a URL: bearer token")
    p.add_argument("--cache-dir", type=Path, help="with a URL: local package cache")
    p.add_argument("--device", default="cpu")
    p.add_argument("--top-k", type=int, help="image models: labels per image")
    p.add_argument("--json", action="store_true", help="print the handler's whole answer")
    p.add_argument(
        "--trust-code",
        action="store_true",
        help="let the package import and run code it names (only for packages whose author you trust)",
    )
    p.add_argument(
        "--compressed-domain",
        nargs="?",
        const="auto",
        choices=["auto", "all"],
        help="keep Linear and 1x1 conv weights as JPEG coefficients and compute from them (auto: where it pays)",
    )
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
        path = c.download(args.model, args.quality, dest=args.output, check=True)
    print(f"{path} ({path.stat().st_size} bytes, verified and decoded)")
    return 0


def push(args: argparse.Namespace) -> int:
    with _client(args) as c:
        model = c.push(args.package, args.name, args.version)
    print(f"{model['name']} version {model['version']}: serving ({model['package_bytes']} bytes)")
    return 0


def show(items: list[str], answer: dict) -> None:
    """One line per item: ``item, class index, label, score`` for classifiers; the whole answer
    as JSON for other handlers."""
    if "top_k" not in answer:
        print(json.dumps(answer))
        return
    for item, top in zip(items, answer["top_k"]):
        print(f"{item}\t{top[0]['index']}\t{top[0]['label']}\t{top[0]['score']:.3f}")


def predict(args: argparse.Namespace) -> int:
    kind = {"text": args.items} if args.text else {"images": [Path(i) for i in args.items]}
    with _client(args) as c:
        answer = c.predict(**kind, model=args.model, top_k=args.top_k)
    print(json.dumps(answer)) if args.json else show(args.items, answer)
    return 0


def run(args: argparse.Namespace) -> int:
    from jpegweights.client import PackagedModel

    if args.package.startswith(("http://", "https://")):
        args.url = args.package
        with _client(args) as c:
            model = c.load(
                args.model,
                args.quality,
                args.device,
                trust_code=args.trust_code,
                compressed_domain=args.compressed_domain,
            )
    else:
        model = PackagedModel.from_package(
            Path(args.package).read_bytes(),
            args.device,
            trust_code=args.trust_code,
            compressed_domain=args.compressed_domain,
            what=args.package,
        )
    options = {} if args.top_k is None else {"top_k": args.top_k}
    answer = model.predict(args.items, **options)
    print(json.dumps(answer)) if args.json else show(args.items, answer)
    return 0


def models(args: argparse.Namespace) -> int:
    with _client(args) as c:
        listing = c.models()
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    print(f"{'model':<18} {'version':<8} {'quality':>7} {'package bytes':>14} {'float32 bytes':>14}  handler")
    for m in listing:
        print(
            f"{m['name']:<18} {m['version']:<8} {m['quality']:>7} {m['package_bytes']:>14} "
            f"{m['uncompressed_bytes']:>14}  {m.get('handler')}"
        )
    return 0
