"""``serve``: run the model server with uvicorn."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path


class MissingExtra(RuntimeError):
    """The server's packages are not installed (a client-only install)."""


class CannotListen(OSError):
    """The host and port cannot be bound (in use, not ours, no such address)."""


EXPECTED_ERRORS: tuple[type[BaseException], ...] = (MissingExtra, CannotListen)


def listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound before any model loads: a busy port fails at once, in one
    line, not after loading every model (uvicorn binds only after the app's start-up).

    >>> sock = listen("127.0.0.1", 0)
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restart over TIME_WAIT
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CannotListen(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the model store over HTTP (settings also from JPEGWEIGHTS_* variables)")
    p.add_argument("--model-dir", type=Path, help="model store (default: ./models)")
    p.add_argument("--host", help="default 127.0.0.1")
    p.add_argument("--port", type=int, help="default 8000")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-batching", action="store_true", help="one forward pass per request")
    p.add_argument(
        "--compressed-domain",
        nargs="?",
        const="auto",
        choices=["off", "auto", "all"],
        help=(
            "keep Linear and 1x1 conv weights as JPEG coefficients and compute from them: where it pays (auto, the "
            "default of this flag) or wherever possible (all)"
        ),
    )
    p.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    import logging

    try:
        import uvicorn

        from jpegweights.service import Settings, create_app
    except ImportError as exc:
        raise MissingExtra(
            f"serving needs the server's packages ({exc.name} is missing): pip install 'jpegweights[serve]'"
        ) from exc

    overrides = {
        k: v
        for k, v in {
            "model_dir": args.model_dir,
            "host": args.host,
            "port": args.port,
            "device": args.device,
            "compressed_domain": args.compressed_domain,
        }.items()
        if v is not None
    }
    if args.no_batching:
        overrides["batching"] = False
    settings = Settings(**overrides)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Keep idle connections open longer than clients do (httpx: 5 s, the same as uvicorn's default):
    # otherwise a client can reuse a connection in the instant the server closes it, and a good
    # request fails with a reset (the soak test saw 6 in 86,000 requests).
    sock = listen(settings.host, settings.port)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=False,
        log_level="warning",
        timeout_keep_alive=settings.keep_alive_s,
    )
    with sock:
        uvicorn.Server(config).run(sockets=[sock])  # uvicorn listens on it once the models are loaded
    return 0
