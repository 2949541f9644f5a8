"""``text-embedding``: sentences in, vectors out (and cosine similarities, given pairs).

Handler config (all travels in the package):

    {"tokenizer": "<the tokenizer.json file, as a string>",   Hugging Face ``tokenizers``
     "max_length": 256,          tokens per text, special tokens included
     "pooling": "mean",          mean over the attention mask, or "cls" (the first token)
     "normalize": true}          unit-length vectors

A text longer than ``max_length`` tokens is truncated, as sentence-transformers does, and
the answer says so (``truncated``); a request with ``"truncate": false`` gets a 422 instead.
The module is a transformers encoder called as ``module(input_ids=, attention_mask=,
token_type_ids=)``, whose first output is the last hidden state.
"""

from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import arrays
from .base import Batch, Handler, Limits, Request, Signature, TensorSpec, config_value, option
from .errors import HandlerConfigError, RequestError, RequestTooLarge, described, one_line, passes_through

MAX_TEXT_CHARS = 100_000  # per text: bounds the tokenizer's work on a hostile request
WORKER = Path(__file__).with_name("tokenize_worker.py")
WORKER_START_S = 60.0  # a fresh worker loads the tokenizer this process has already loaded once
ZIPF_OFFSET = 100  # token_prior's 1 / (id + offset): measured on MiniLM (docs/codec.md)
# Encoded at load, beside the example: characters no small vocabulary holds, so that a tokenizer
# that fails on unknown text (an unk_token missing from its vocabulary) is refused at load.
PROBE = "an example sentence \u00e9\u2603\U0001f4a5\x00 \u0416\u4e2d ##"


def _check_unicode(text: str, where: str) -> None:
    """A ``RequestError`` for a string UTF-8 cannot hold: JSON's ``"\\ud800"`` escapes decode to
    lone surrogates, which no tokenizer (nor any reply) can carry."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(
            f"{where} is not valid Unicode: a lone surrogate {text[exc.start]!r} at character {exc.start}"
        ) from None


def _encode(tokenizer: Any, texts: list[str], error: type[Exception], what: str) -> list[Any]:
    """``tokenizer.encode_batch(texts)``; a failure (an Exception, or a panic of its Rust code,
    a BaseException) raises ``error`` naming it: the package's fault, never a crash."""
    try:
        return tokenizer.encode_batch(texts)
    except BaseException as exc:
        if passes_through(exc):
            raise
        raise error(f"{what}: {described(exc)}") from None


class TokenizerProcess:
    """The tokenizer in a process of its own (``tokenize_worker``), killed when one call takes
    longer than its timeout and started afresh on the next: a package's tokenizer (a backtracking
    pre-tokenizer regex) can run for minutes on a few kilobytes, and a thread cannot be stopped.
    One call at a time; the process starts on the first and ends with this object."""

    def __init__(self, source: str, max_length: int):
        self.setup = {"tokenizer": source, "max_length": max_length}
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None

    def __deepcopy__(self, memo: dict) -> TokenizerProcess:  # a copied handler starts its own process
        return TokenizerProcess(self.setup["tokenizer"], self.setup["max_length"])

    def encode(self, texts: list[str], timeout: float) -> tuple[list[list[int]], list[bool]]:
        with self.lock:
            try:
                if self.proc is None:
                    self.proc = subprocess.Popen(
                        [sys.executable, "-s", str(WORKER)],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL,  # a Rust panic's backtrace: the answer carries its message
                    )
                    self.stop = weakref.finalize(self, _stop, self.proc)  # kills and reaps it, once
                    self._call(self.setup, WORKER_START_S)
                reply = self._call({"texts": texts}, timeout)
            except TimeoutError:
                self._stop()
                raise RequestTooLarge(
                    f"the model's tokenizer took more than {timeout:g} s on this request: send fewer or shorter texts"
                ) from None
            except (OSError, EOFError, ValueError):
                self._stop()
                raise RequestError("the model's tokenizer fails on this text: its process failed") from None
        if "error" in reply:
            raise RequestError(f"the model's tokenizer fails on this text: {one_line(reply['error'])}")
        return reply["ids"], reply["truncated"]

    def _call(self, message: dict, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        data = json.dumps(message, separators=(",", ":")).encode()
        self.proc.stdin.write(struct.pack("<I", len(data)) + data)
        self.proc.stdin.flush()
        (n,) = struct.unpack("<I", self._read(4, deadline))
        reply = json.loads(self._read(n, deadline))
        if "error" in reply and "tokenizer" in message:
            raise ValueError(reply["error"])
        return reply

    def _read(self, n: int, deadline: float) -> bytes:
        fd, buf = self.proc.stdout.fileno(), bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(fd, n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def _stop(self) -> None:
        if self.proc is not None:
            self.stop()
            self.proc = None


def _stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()
    proc.stdin.close()
    proc.stdout.close()


class TextEmbedding(Handler):
    name = "text-embedding"
    options = frozenset({"truncate"})

    def configure(self) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise HandlerConfigError(
                "the text-embedding handler needs the 'tokenizers' library: pip install 'jpegweights[models]'"
            ) from None
        c = self.config
        self.max_length = config_value(c, "max_length", int, 256)
        if not 2 <= self.max_length <= 8192:
            raise HandlerConfigError("handler config 'max_length' must be 2..8192")
        self.pooling = config_value(c, "pooling", str, "mean")
        if self.pooling not in ("mean", "cls"):
            raise HandlerConfigError(f"handler config 'pooling' must be 'mean' or 'cls', got {self.pooling!r}")
        self.normalize = config_value(c, "normalize", bool, True)
        source = config_value(c, "tokenizer", str)
        try:
            self.tokenizer = Tokenizer.from_str(source)
        except BaseException as exc:  # an Exception for a bad file, a PanicException for some (Rust panics)
            if passes_through(exc):
                raise
            raise HandlerConfigError(f"the package's tokenizer does not load: {described(exc)}") from None
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        _encode(self.tokenizer, [PROBE], HandlerConfigError, "the package's tokenizer fails on a test text")
        self.process = TokenizerProcess(source, self.max_length)

    def example(self) -> Request:
        return Request(text=["an example sentence"])

    def texts(self, request: Request, limits: Limits) -> list[str]:
        if request.images is not None or request.inputs is not None:
            raise RequestError("this model embeds text; send text (a list of strings) or pairs")
        if (request.text is None) == (request.pairs is None):
            raise RequestError("send exactly one of text (a list of strings) or pairs (a list of [text, text])")
        if request.pairs is not None:
            arrays.check_count(len(request.pairs), limits.max_samples, "pairs")
            if not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in request.pairs):
                raise RequestError("pairs must be a list of [text, text]")
            texts = [t for p in request.pairs for t in p]
        else:
            texts = list(request.text)
            arrays.check_count(len(texts), limits.max_samples, "text")
        for i, t in enumerate(texts):
            where = f"pairs[{i // 2}][{i % 2}]" if request.pairs is not None else f"text[{i}]"
            if not isinstance(t, str):
                raise RequestError(f"{where} is not a string")
            if len(t) > MAX_TEXT_CHARS:
                raise RequestTooLarge(f"{where} has {len(t)} characters; the limit is {MAX_TEXT_CHARS}")
            if not t.isascii():
                _check_unicode(t, where)
        return texts

    def tokenize(self, texts: list[str], limits: Limits) -> tuple[list[list[int]], list[bool]]:
        """Token ids and whether each text was truncated: in a process of their own, stopped
        after ``limits.tokenize_timeout_s``, when that is set (a server sets it)."""
        if limits.tokenize_timeout_s is not None:
            return self.process.encode(texts, limits.tokenize_timeout_s)
        encodings = _encode(self.tokenizer, texts, RequestError, "the model's tokenizer fails on this text")
        return [e.ids for e in encodings], [bool(e.overflowing) for e in encodings]

    def decode_request(self, request: Request, limits: Limits = Limits()) -> Batch:
        tokens, truncated = self.tokenize(self.texts(request, limits), limits)
        if any(truncated) and not option(request, "truncate", bool, True):
            i = truncated.index(True)
            raise RequestError(
                f"text[{i}] has more than the model's {self.max_length} tokens "
                '(send "truncate": true to cut it, as sentence-transformers does)'
            )
        length = max(len(t) for t in tokens)
        if len(tokens) * length > limits.max_tokens:  # what the forward pass will cost: every row padded
            raise RequestTooLarge(
                f"the request's {len(tokens)} texts, padded to the longest ({length} tokens), are "
                f"{len(tokens) * length} tokens; the limit is {limits.max_tokens} per request: "
                "send fewer or shorter texts"
            )
        ids = np.zeros((len(tokens), length), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, t in enumerate(tokens):
            ids[row, : len(t)] = t
            mask[row, : len(t)] = 1
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask),
            "truncated": torch.tensor(truncated),
        }

    def predict(self, batch: Batch) -> Batch:
        mask = batch["attention_mask"]
        out = self.call(input_ids=batch["input_ids"], attention_mask=mask, token_type_ids=torch.zeros_like(mask))
        hidden = (out[0] if not isinstance(out, torch.Tensor) else out).float()
        if self.pooling == "cls":
            vectors = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            vectors = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        if self.normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=1)
        return {"embedding": vectors, "truncated": batch["truncated"]}

    def module_inputs(self) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, ...]], bool]:
        batch = self.decode_request(Request(text=["a short text", "and a longer one, which the first is padded to"]))
        mask = batch["attention_mask"]
        inputs = {"input_ids": batch["input_ids"], "attention_mask": mask, "token_type_ids": torch.zeros_like(mask)}
        return inputs, {k: (0, 1) for k in inputs}, True

    def measure(self, outputs: Batch) -> Signature:
        self.dimensions = outputs["embedding"].shape[1]
        return Signature(
            inputs=(TensorSpec("text", "BYTES", (-1,), "text"),),
            outputs=(TensorSpec("embedding", "FP32", (-1, self.dimensions)), TensorSpec("truncated", "BOOL", (-1,))),
        )

    def encode_response(self, outputs: Batch, request: Request) -> dict[str, Any]:
        vectors, truncated = outputs["embedding"], outputs["truncated"].tolist()
        if request.pairs is not None:
            a, b = vectors[0::2], vectors[1::2]
            similarity = torch.nn.functional.cosine_similarity(a, b, dim=1)
            return {
                "similarities": similarity.tolist(),
                "truncated": [truncated[i : i + 2] for i in range(0, len(truncated), 2)],
            }
        return {"embeddings": vectors.tolist(), "truncated": truncated}

    def positions(self, batch: Batch) -> torch.Tensor:
        return batch["attention_mask"].bool()

    def lookups(self, batches: Sequence[Batch]) -> dict[str, torch.Tensor]:
        """The token embeddings' rows (the one ``nn.Embedding`` with a row for every token id):
        half the share of each token among the tokens of ``batches``, half a prior over the
        vocabulary (``token_prior``), so that tokens the inputs never showed still count."""
        vocab = self.tokenizer.get_vocab_size(with_added_tokens=True)
        tables = {
            f"{p}.weight" if p else "weight": m
            for p, m in self.module.named_modules()
            if isinstance(m, torch.nn.Embedding) and m.num_embeddings >= vocab
        }
        if len(tables) != 1:
            return {}
        ((key, table),) = tables.items()
        counts = torch.zeros(vocab, dtype=torch.float64)
        for b in batches:
            counts += torch.bincount(b["input_ids"][self.positions(b)], minlength=vocab)[:vocab].double()
        prior = self.token_prior()
        seen = counts / counts.sum() if counts.sum() > 0 else prior
        weights = torch.zeros(
            table.num_embeddings, dtype=torch.float64
        )  # rows past the vocabulary: no token looks them up
        weights[:vocab] = (prior + seen) / 2
        return {key: weights}

    def token_prior(self) -> torch.Tensor:
        """How often each token id is expected, before any input is seen, float64 summing to 1.
        A Unigram tokenizer holds each piece's log-probability. WordPiece and BPE trainers
        give ids in order of frequency (of merges, for BPE), so Zipf's law on the id stands in
        for it there: ``1 / (id + ZIPF_OFFSET)``."""
        model = json.loads(self.tokenizer.to_str()).get("model", {})
        vocab = self.tokenizer.get_vocab_size(with_added_tokens=True)
        prior = (torch.arange(vocab, dtype=torch.float64) + ZIPF_OFFSET).reciprocal()
        if model.get("type") == "Unigram" and len(model.get("vocab", [])) == vocab:
            scores = torch.tensor([float(score) for _, score in model["vocab"]], dtype=torch.float64)
            if bool(torch.isfinite(scores).all()):
                prior = (scores - scores.max()).exp()
        return prior / prior.sum()

    def describe(self) -> dict[str, Any]:
        return {
            "dimensions": self.dimensions,
            "max_length": self.max_length,
            "pooling": self.pooling,
            "normalize": self.normalize,
        }
