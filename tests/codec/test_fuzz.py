"""The seeded fuzzer (tests/codec/fuzz.py): mutated packages decode or raise a CodecError, never anything else.

300 cases of seed 0 run in a watched child process (a few seconds). A failure's message holds the
whole summary; replay a case with ``python -m tests.codec.fuzz --seed 0 --replay CASE``.
"""

from __future__ import annotations

import pytest

from .fuzz import GOOD, mutate, run

CASES = 300


@pytest.fixture(scope="module")
def summary():
    return run(cases=CASES, seed=0)


def test_no_escapes_hangs_memory_failures_or_crashes(summary):
    report = summary.format()
    assert summary.cases == CASES, report
    assert not summary.escapes, (
        f"{len(summary.escapes)} exception(s) other than CodecError escaped the reader\n{report}"
    )
    assert not summary.hangs, f"{len(summary.hangs)} case(s) hung\n{report}"
    assert not summary.memory_failures, (
        f"{len(summary.memory_failures)} case(s) grew RSS by more than {summary.max_mib:g} MiB\n{report}"
    )
    assert not summary.crashes, f"{len(summary.crashes)} case(s) killed the process\n{report}"
    assert not summary.fuzzer_errors, f"the fuzzer itself failed on {len(summary.fuzzer_errors)} case(s)\n{report}"


def test_the_fuzzer_reaches_past_the_digest_check(summary):
    """Sanity: the mutations are not all refused at the door, so the deeper checks are exercised."""
    report = summary.format()
    assert len(summary.refused) >= 2, f"only {sorted(summary.refused)} refusals seen\n{report}"
    assert summary.decoded > 0, f"no mutated package decoded\n{report}"
    assert summary.past_digest >= 0.1 * summary.cases, f"fewer than 10% of cases got past the digest check\n{report}"
    assert {"ManifestError", "JpegDecodeError"} <= set(summary.refused), (
        f"the manifest and JPEG checks were not reached\n{report}"
    )


def test_cases_are_deterministic():
    base = GOOD.read_bytes()
    for case in range(0, 40):
        assert mutate(0, case, base) == mutate(0, case, base), f"case {case} differs between two runs"
    assert mutate(0, 0, base) != mutate(1, 0, base)


def test_the_watcher_catches_injected_hangs_crashes_memory_and_escapes():
    """Faults injected into chosen cases are each reported as such, and the run goes on after them."""
    s = run(cases=6, seed=0, max_mib=40, hang_s=3, selftest="1:hang,3:crash,4:mem60,5:escape")
    report = s.format()
    assert s.cases == 6, report
    assert [h["i"] for h in s.hangs] == [1], report
    assert [c["i"] for c in s.crashes] == [3] and s.crashes[0]["exit"] < 0, report
    assert [m["i"] for m in s.memory_failures] == [4], report
    assert [e["i"] for e in s.escapes] == [5] and "injected escape" in s.escapes[0]["msg"], report
    assert not s.ok
