"""The ``jpegweights`` command: a thin ``main(argv) -> int`` over the libraries.

Exit codes: 0 success, 1 the operation failed (bad file, bad data, network), 2 usage error.
Errors print one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from jpegweights.handlers.errors import ANSI

from . import client_cmds, codec_cmds, import_cmds, serve_cmds, training_cmds

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# Each module adds its subcommands; each subcommand sets ``func(args) -> int``.
COMMAND_MODULES = [codec_cmds, import_cmds, training_cmds, serve_cmds, client_cmds]
EXPECTED_ERRORS = tuple(e for m in COMMAND_MODULES for e in m.EXPECTED_ERRORS)
MAX_MESSAGE = 500


def one_line(message: str) -> str:
    """An error message as the one clean line the CLI promises: escape sequences and control
    characters out, line breaks and runs of spaces as one space, a long one cut between words.

    >>> one_line("load failed.\\n\\t\\x1b[1mdo this\\x1b[0m")
    'load failed. do this'
    """
    text = " ".join("".join(c if c.isprintable() else " " for c in ANSI.sub("", message)).split())
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE].rsplit(" ", 1)[0] + " ..."
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jpegweights", description="Neural-network weights as JPEG-coded tiles.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `jpegweights inspect --json | head`: the reader left, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 128 + 13  # as if killed by SIGPIPE, like other Unix filters
    except Exception as exc:  # one clear line, no traceback
        if not isinstance(exc, EXPECTED_ERRORS):
            raise
        print(f"jpegweights {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
