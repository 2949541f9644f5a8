"""``import``: servable packages from torchvision weights, Hugging Face directories, or any
state_dict with an architecture and a handler."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jpegweights.handlers import HandlerError

from .codec_cmds import encode_config, encode_options, json_file

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (HandlerError,)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import", help="make a servable .jpw (or a model-store folder) from torchvision, Hugging Face or any state_dict"
    )
    kinds = p.add_subparsers(dest="source", required=True, metavar="SOURCE")

    def common(q: argparse.ArgumentParser) -> None:
        where = q.add_mutually_exclusive_group(required=True)
        where.add_argument("-o", "--output", type=Path, help="the .jpw package to write")
        where.add_argument(
            "--store", type=Path, help="a model store: writes STORE/NAME/ (package, float source, model.json)"
        )
        q.add_argument("--name", help="the model's name in --store (default: from the source)")
        # the default preset, as compress and the server's other qualities code
        encode_options(q)
        q.add_argument(
            "--coding",
            default="auto",
            choices=["auto", "jpeg", "int8", "raw"],
            help="coding of every tensor (default %(default)s)",
        )

    q = kinds.add_parser(
        "torchvision",
        help="a torchvision model name and its weights (.pth read with weights_only=True, or .safetensors)",
    )
    q.add_argument("model", help="e.g. mobilenet_v2, resnet18")
    q.add_argument("weights", type=Path)
    q.add_argument(
        "--kwargs", type=json.loads, default={}, help="constructor arguments as JSON, e.g. '{\"num_classes\": 10}'"
    )
    q.add_argument(
        "--handler",
        type=Path,
        help="handler JSON (default: image classification with torchvision's labels and preprocessing)",
    )
    common(q)
    q.set_defaults(func=import_cmd)

    q = kinds.add_parser(
        "huggingface",
        help=(
            "a Hugging Face encoder directory (config.json, model.safetensors, tokenizer.json): a text-embedding model"
        ),
    )
    q.add_argument("directory", type=Path)
    common(q)
    q.set_defaults(func=import_cmd)

    q = kinds.add_parser("state", help="any state_dict with an architecture JSON and (optionally) a handler JSON")
    q.add_argument("weights", type=Path)
    q.add_argument(
        "--architecture", type=Path, required=True, help='JSON, e.g. {"kind": "python", "factory": "mypkg.models:Net"}'
    )
    q.add_argument("--handler", type=Path, help='JSON, e.g. {"name": "raw", "config": {"input_shape": [16]}}')
    common(q)
    q.set_defaults(func=import_cmd)


def import_cmd(args: argparse.Namespace) -> int:
    from jpegweights.codec import encode
    from jpegweights.handlers import importers

    if args.source == "torchvision":
        imported, name = (
            importers.from_torchvision(args.model, args.weights, args.kwargs, json_file(args.handler)),
            args.model,
        )
    elif args.source == "huggingface":
        imported, name = importers.from_huggingface(args.directory), args.directory.resolve().name
    else:
        imported, name = (
            importers.from_state_dict(args.weights, json_file(args.architecture), json_file(args.handler)),
            args.weights.stem,
        )
    config = encode_config(args, coding=args.coding)
    how = f"quality {config.quality}" if args.coding in ("auto", "jpeg") else args.coding
    for note in imported.notes:
        print(f"note: {note}")
    if args.store is not None:
        folder = args.store / (args.name or name.lower())
        size = importers.write_folder(imported, folder, config)
        print(f"{folder}: {size} bytes, {how} ({imported.handler['name']}), float source kept for other qualities")
    else:
        data = encode(imported.state, config, imported.architecture, imported.handler)
        args.output.write_bytes(data)
        print(f"{args.output}: {len(data)} bytes, {how} ({imported.handler['name']})")
    return 0
