"""A process that tokenizes for one model, so that a server can stop a tokenizer that runs too
long (``text.TokenizerProcess``). Run by path, so that it imports ``tokenizers`` and nothing of
jpegweights (nor torch): it starts in a fraction of a second and holds only the tokenizer.

Messages both ways are a 4-byte little-endian length and that much JSON. The first one sent is
``{"tokenizer": "<tokenizer.json>", "max_length": n}``, answered ``{}``; then each
``{"texts": [...]}`` is answered ``{"ids": [[...], ...], "truncated": [...]}``. Either answer is
``{"error": "Type: message"}`` when the tokenizer fails, a Rust panic included.
"""

from __future__ import annotations

import json
import struct
import sys


def read(stream) -> dict | None:
    head = stream.read(4)
    if len(head) < 4:
        return None
    return json.loads(stream.read(struct.unpack("<I", head)[0]))


def write(stream, message: dict) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    stream.write(struct.pack("<I", len(data)) + data)
    stream.flush()


def answer(message: dict, state: dict) -> dict:
    try:
        if "tokenizer" in message:
            from tokenizers import Tokenizer

            state["tokenizer"] = tokenizer = Tokenizer.from_str(message["tokenizer"])
            tokenizer.no_padding()
            tokenizer.enable_truncation(message["max_length"])
            return {}
        encodings = state["tokenizer"].encode_batch(message["texts"])
        return {"ids": [e.ids for e in encodings], "truncated": [bool(e.overflowing) for e in encodings]}
    except BaseException as exc:  # a PanicException from the Rust code is a BaseException
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return {"error": f"{type(exc).__name__}: {exc}"}


def main() -> None:
    state: dict = {}
    while (message := read(sys.stdin.buffer)) is not None:
        write(sys.stdout.buffer, answer(message, state))


if __name__ == "__main__":
    main()
