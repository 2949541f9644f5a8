"""The seeded handler fuzzer (tests/handlers/fuzz.py): mutated packages load or raise a
``HandlerError``, never anything else. 300 cases of seed 0 run in a watched worker (seconds);
replay one with ``python -m tests.handlers.fuzz --seed 0 --replay CASE``."""

from __future__ import annotations

import pytest

from . import fuzz

CASES = 300


@pytest.fixture(scope="module")
def summary():
    return fuzz.run(cases=CASES, seed=0)


def test_no_escapes_hangs_memory_failures_or_crashes(summary):
    report = summary.format()
    assert summary.cases == CASES, report
    assert not summary.escapes, f"{len(summary.escapes)} exception(s) other than HandlerError escaped\n{report}"
    assert not summary.hangs, f"{len(summary.hangs)} case(s) hung\n{report}"
    assert not summary.memory_failures, f"{len(summary.memory_failures)} case(s) grew RSS too much\n{report}"
    assert not summary.crashes, f"{len(summary.crashes)} case(s) killed the process\n{report}"
    assert not summary.fuzzer_errors, f"the fuzzer itself failed on {len(summary.fuzzer_errors)} case(s)\n{report}"


def test_the_fuzzer_reaches_every_strategy_and_both_outcomes(summary):
    report = summary.format()
    assert set(summary.strategies) == {"manifest", "state", "tokenizer", "tokenizer_text"}, report
    assert {"ArchitectureError", "HandlerConfigError"} <= set(summary.refused), report
    assert summary.decoded > 0, f"no mutated package loaded\n{report}"


def test_cases_are_deterministic():
    bases = {name: {"manifest": manifest, "shapes": {"w": [2, 3]}} for name, manifest in BASES.items()}
    for case in range(40):
        assert fuzz.mutate(0, case, bases) == fuzz.mutate(0, case, bases), f"case {case} differs between two runs"
    assert [fuzz.mutate(0, c, bases) for c in range(5)] != [fuzz.mutate(1, c, bases) for c in range(5)]


def test_a_native_panic_is_counted_as_an_escape(monkeypatch):
    """The worker's classification, in this process: a PanicException (a BaseException) out of
    loading is an escape, a HandlerError a refusal."""
    from tokenizers import Tokenizer

    from .test_load_faults import PANICS_AT_LOAD
    from .tiny_text import tokenizer_json

    bases = {name: {"manifest": m, "shapes": {"w": [2]}, "state": {}} for name, m in BASES.items()}
    monkeypatch.setattr(fuzz, "exercise", lambda m, s: Tokenizer.from_str(tokenizer_json(normalizer=PANICS_AT_LOAD)))
    rec = fuzz.run_case(0, 0, bases)
    assert rec["outcome"] == "escape" and rec["cls"] == "pyo3_runtime.PanicException", rec


def test_the_watcher_catches_injected_hangs_crashes_and_escapes():
    s = fuzz.run(cases=4, seed=0, hang_s=3, selftest="1:hang,2:crash,3:escape")
    report = s.format()
    assert [h["i"] for h in s.hangs] == [1] and [c["i"] for c in s.crashes] == [2], report
    assert [e["i"] for e in s.escapes] == [3] and "injected escape" in s.escapes[0]["msg"], report
    assert not s.ok and "--replay" in s.hangs[0]["note"]


BASES = {
    "mnist-mlp": {"architecture": {"input_shape": [4], "layers": [{"type": "Linear", "in_features": 4}]}},
    "mnist-cnn": {"architecture": {"layers": []}, "handler": {"name": "raw", "config": {}}},
    "text": {"architecture": {"kind": "transformers", "config": {"hidden_size": 8}},
             "handler": {"name": "text-embedding", "config": {"tokenizer": '{"model": {"type": "WordPiece"}}'}}},
}  # fmt: skip
