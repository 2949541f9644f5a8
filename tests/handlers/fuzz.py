"""A seeded fuzzer for model loading: every mutated package's handler loads and answers its own
example, or raises a ``HandlerError``; nothing else escapes (no library exception, no native panic).

    python -m tests.handlers.fuzz --cases 2000 --seed 1         # from the repository root
    python -m tests.handlers.fuzz --seed 1 --replay 123         # one case, with its traceback

Case ``i`` of seed ``s`` picks one of three good packages (the bundled MNIST MLP and CNN, and the
tiny BERT text model of ``tiny_text``) and mutates it with ``random.Random(f"{s}:{i}")`` alone:

- ``manifest``: the ``architecture`` and ``handler`` JSON edited as the codec fuzzer edits a
  manifest (values of random types at random paths, copies, deletions, additions, integer nudges);
- ``tokenizer``: the text model's ``tokenizer.json`` edited the same way, or given a component
  from ``COMPONENTS`` (normalizers and pre-tokenizers whose Rust code is known to panic among them);
- ``tokenizer_text``: the tokenizer's JSON text cut or spliced with odd tokens;
- ``state``: a tensor dropped, reshaped or cast.

Then ``handlers.load`` builds the module and runs the handler's example, and a handler that
loads answers its example once more through ``decode_request -> run -> encode_response``.
The cases run in a worker watched by the codec fuzzer's watcher (``tests/codec/fuzz.py``): no
line for ``hang_s`` seconds is a hang, a dead worker a crash, a peak RSS growth over ``max_mib``
a memory failure.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from tests.codec import fuzz as codec_fuzz
from tests.codec.fuzz import (
    WEIRD_TOKENS,
    PeakMemory,
    Summary,
    _inject,
    _paths,
    _selftest_faults,
    _short,
    m_add,
    m_copy,
    m_delete,
    m_nudge,
    m_value,
)

ROOT = Path(__file__).resolve().parents[2]
MODULE = "tests.handlers.fuzz"
BASES = ("mnist-mlp", "mnist-cnn", "text")
# Tokenizer parts worth transplanting: the panicking SentencePiece charsmaps, and valid parts of each kind.
COMPONENTS = [
    {"type": "Precompiled", "precompiled_charsmap": "AAAAAA=="},
    {"type": "Precompiled", "precompiled_charsmap": "/////wAAAAA="},
    {"type": "Replace", "pattern": {"String": ""}, "content": "x"},
    {"type": "Split", "pattern": {"Regex": ""}, "behavior": "Isolated", "invert": False},
    {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    {"type": "NFKC"},
    {"type": "Sequence", "normalizers": [{"type": "Lowercase"}, {"type": "StripAccents"}]},
    {"type": "Unigram", "unk_id": None, "vocab": []},
    {"type": "BPE", "vocab": {"a": 0}, "merges": [], "unk_token": "[UNK]"},
    {"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "[UNK]"},
    {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "[X]", "type_id": 0}}], "pair": [],
     "special_tokens": {}},
]  # fmt: skip
MANIFEST_EDITS = [(m_value, 5), (m_copy, 1), (m_delete, 2), (m_add, 2), (m_nudge, 3)]


# ================================================================ mutations (pure functions of rng and the base)


def _pick(rng: random.Random, weighted: list[tuple[Any, int]]) -> Any:
    return rng.choices([x for x, _ in weighted], [w for _, w in weighted])[0]


def _edit(rng: random.Random, doc: dict[str, Any], names: dict[str, Any], rounds: int) -> list[str]:
    """``rounds`` of the codec fuzzer's manifest edits on ``doc``; one that finds nothing to edit
    (no integer to nudge) sets a value instead."""
    notes = []
    for _ in range(rounds):
        edit = _pick(rng, MANIFEST_EDITS)
        try:
            notes.append(edit(rng, doc, names))
        except (IndexError, KeyError, TypeError):
            if not _paths(doc):
                return [*notes, "nothing left to edit"]
            notes.append(m_value(rng, doc, names))
    return notes


def mutate_tokenizer(rng: random.Random, source: str) -> tuple[str, str]:
    """The tokenizer.json ``source`` edited: (new source, what changed)."""
    spec = json.loads(source)
    if rng.random() < 0.35:
        slot = rng.choice(["normalizer", "pre_tokenizer", "model", "post_processor", "decoder"])
        spec[slot] = copy.deepcopy(rng.choice(COMPONENTS))
        return json.dumps(spec), f"tokenizer {slot} = {_short(spec[slot], 80)}"
    notes = _edit(rng, spec, {}, rng.choice([1, 1, 2, 3]))
    return json.dumps(spec), "tokenizer " + "; ".join(notes)


def mutate_tokenizer_text(rng: random.Random, source: str) -> tuple[str, str]:
    at = rng.randrange(len(source))
    if rng.random() < 0.3:
        return source[:at], f"tokenizer text cut at {at}"
    token = rng.choice(WEIRD_TOKENS)
    return source[:at] + token + source[at + rng.choice([0, 1, 4]) :], f"tokenizer text at {at}: {_short(token)}"


def mutate_state(rng: random.Random, shapes: dict[str, list[int]]) -> tuple[dict[str, Any], str]:
    """An edit of the tensors, as data (applied by ``apply_state``): drop, reshape or cast one."""
    key = rng.choice(sorted(shapes))
    op = rng.choice(["drop", "flatten", "shrink", "grow", "cast"])
    edit = {"op": op, "key": key, "dtype": rng.choice(["float16", "float64", "int64", "bool", "uint8"])}
    return edit, f"state {op} {key}{' to ' + edit['dtype'] if op == 'cast' else ''}"


def mutate(seed: int, case: int, bases: dict[str, dict[str, Any]]) -> tuple[str, str, dict[str, Any], dict]:
    """Case ``case`` of ``seed``: (strategy, description, the mutated manifest, a state edit or {}).
    ``bases`` maps each base's name to ``{"manifest": ..., "shapes": {key: shape}}``."""
    rng = random.Random(f"{seed}:{case}")
    name = rng.choice(BASES)
    manifest, shapes = copy.deepcopy(bases[name]["manifest"]), bases[name]["shapes"]
    text = name == "text"
    strategy = _pick(rng, [("manifest", 5), ("tokenizer", 4 if text else 0), ("tokenizer_text", 1 if text else 0),
                           ("state", 2)])  # fmt: skip
    state_edit: dict[str, Any] = {}
    if strategy == "manifest":
        note = "; ".join(_edit(rng, manifest, dict.fromkeys(shapes), rng.choice([1, 1, 2, 3])))
    elif strategy == "state":
        state_edit, note = mutate_state(rng, shapes)
    else:
        config = manifest["handler"]["config"]
        edit = mutate_tokenizer if strategy == "tokenizer" else mutate_tokenizer_text
        config["tokenizer"], note = edit(rng, config["tokenizer"])
    return strategy, f"{name}: {note}", manifest, state_edit


def apply_state(state: dict[str, Any], edit: dict[str, Any]) -> dict[str, Any]:
    import torch

    if not edit:
        return state
    state, key = dict(state), edit["key"]
    t = state[key]
    if edit["op"] == "drop":
        del state[key]
    elif edit["op"] == "flatten":
        state[key] = t.reshape(-1)
    elif edit["op"] == "shrink":
        state[key] = t[: max(0, len(t) - 1)] if t.dim() else t.reshape(1)
    elif edit["op"] == "grow":
        state[key] = torch.cat([t, t[:1]]) if t.dim() else t.reshape(1, 1)
    else:
        state[key] = t.to(getattr(torch, edit["dtype"]))
    return state


# ================================================================ the worker


def load_bases() -> dict[str, dict[str, Any]]:
    """The three good packages: manifest (architecture and handler), state, and shapes."""
    from jpegweights.codec import load_package

    from .tiny_text import tiny_text

    bases = {}
    for name in ("mnist-mlp", "mnist-cnn"):
        state, manifest = load_package(ROOT / "models" / name / "model.jpw")
        bases[name] = {
            "manifest": {k: manifest[k] for k in ("architecture", "handler") if k in manifest},
            "state": state,
        }
    manifest, state = tiny_text()
    bases["text"] = {"manifest": manifest, "state": state}
    for base in bases.values():
        base["shapes"] = {k: list(v.shape) for k, v in base["state"].items()}
    return bases


def exercise(manifest: dict[str, Any], state: dict[str, Any]) -> None:
    """Load, then answer the handler's example once more as a server would."""
    from jpegweights import handlers

    handler = handlers.load(manifest, state)
    request = handler.example()
    handler.encode_response(handler.run(handler.decode_request(request)), request)


def run_case(seed: int, case: int, bases: dict, memory: PeakMemory | None = None, fault: str | None = None) -> dict:
    from jpegweights.handlers import HandlerError

    rec: dict[str, Any] = {"i": case}
    try:
        strategy, note, manifest, edit = mutate(seed, case, bases)
        name = note.split(":", 1)[0]
        state = apply_state(bases[name]["state"], edit)
    except Exception as exc:  # a bug in the fuzzer itself: reported, never counted as the handlers'
        return {**rec, "outcome": "fuzzer_error", "cls": type(exc).__name__, "msg": str(exc)[:300]}
    rec.update(strategy=strategy, note=note[:300])
    if memory:
        memory.start()
    try:
        if fault:
            _inject(fault)
        exercise(manifest, state)
        rec["outcome"] = "decoded"
    except HandlerError as exc:
        rec.update(outcome="refused", cls=type(exc).__name__)
    except BaseException as exc:  # noqa: BLE001 - anything else is what we are looking for
        if isinstance(exc, KeyboardInterrupt):
            raise
        rec.update(outcome="escape", cls=f"{type(exc).__module__}.{type(exc).__qualname__}", msg=str(exc)[:300],
                   where=_where(exc))  # fmt: skip
    if memory:
        rec["mib"] = round(memory.growth_mib(), 1)
    return rec


def _where(exc: BaseException) -> str:
    """The innermost frame of the traceback in the handlers package (else the innermost)."""
    frames = traceback.extract_tb(exc.__traceback__)
    inside = [f for f in frames if os.path.join("jpegweights", "handlers") + os.sep in f.filename]
    f = (inside or frames or [None])[-1]
    return "?" if f is None else f"{Path(f.filename).name}:{f.lineno} ({f.name})"


def worker(seed: int, start: int, stop: int) -> None:
    """Run cases ``start..stop-1``, one JSON line each on stdout; everything else goes to stderr."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints from libraries cannot corrupt the protocol
    os.environ.setdefault("RUST_BACKTRACE", "0")
    bases = load_bases()
    exercise(bases["text"]["manifest"], bases["text"]["state"])  # warm-up: transformers' imports
    memory = PeakMemory()
    faults = _selftest_faults()
    out.write(json.dumps({"ready": True, "exact_memory": memory.exact}) + "\n")
    for case in range(start, stop):
        out.write(json.dumps(run_case(seed, case, bases, memory, faults.get(case))) + "\n")
    out.write(json.dumps({"done": True}) + "\n")


# ================================================================ the parent


def _describe(seed: int, case: int) -> dict[str, str]:
    """The parent does not import torch, so a case the worker could not report is named by its replay."""
    return {"strategy": "?", "note": f"python -m {MODULE} --seed {seed} --replay {case}"}


def run(
    cases: int,
    seed: int,
    *,
    max_mib: float = 512.0,
    hang_s: float = 20.0,
    start: int = 0,
    progress: int | None = None,
    selftest: str | None = None,
) -> Summary:
    """Run cases ``start..start+cases-1`` of ``seed`` in watched child processes."""
    t0 = time.monotonic()
    summary = Summary(seed=seed, max_mib=max_mib, module=MODULE, accepted="loaded")
    codec_fuzz._run_range(summary, seed, start, start + cases, hang_s, max_mib, progress, selftest, _describe)
    summary.wall_s = time.monotonic() - t0
    return summary


def replay(seed: int, case: int) -> int:
    """Run one case in this process and show everything about it."""
    from jpegweights.handlers import HandlerError

    bases = load_bases()
    strategy, note, manifest, edit = mutate(seed, case, bases)
    print(f"case {case} of seed {seed}: {strategy}: {note}")
    t0 = time.monotonic()
    try:
        exercise(manifest, apply_state(bases[note.split(":", 1)[0]]["state"], edit))
        print("loaded and answered its example")
        status = 0
    except HandlerError as exc:
        print(f"refused: {type(exc).__name__}: {exc}")
        status = 0
    except BaseException:  # noqa: BLE001 - a panic too
        traceback.print_exc()
        status = 1
    print(f"{time.monotonic() - t0:.3f} s")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="first case index")
    parser.add_argument("--max-mib", type=float, default=512.0, help="peak RSS growth allowed per case (MiB)")
    parser.add_argument("--hang-s", type=float, default=20.0, help="seconds without a finished case that make a hang")
    parser.add_argument("--replay", type=int, metavar="CASE", help="run one case here, with its traceback")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stop", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.seed, args.start, args.stop)
        return 0
    if args.replay is not None:
        return replay(args.seed, args.replay)
    summary = run(args.cases, args.seed, max_mib=args.max_mib, hang_s=args.hang_s, start=args.start, progress=200)
    print(summary.format())
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
