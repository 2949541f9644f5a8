"""The README runs as written: every ``sh`` and ``python`` block is executed from the repository
root with the venv's ``bin`` first on PATH (as after ``. .venv/bin/activate``).

The line before a block may say how: ``<!-- readme-test: server -->`` runs it against the
suite's real server (its address in place of ``127.0.0.1:8000``); ``<!-- readme-test: skip
(reason) -->`` does not run it, for blocks that serve forever, need Docker, or train for
minutes, and the reason names what covers them instead."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(
    r"(?:<!-- readme-test: (?P<mode>server|skip \((?P<reason>[^)]+)\)) -->\n)?"
    r"```(?P<lang>sh|python)\n(?P<body>.*?)```",
    re.S,
)


def blocks() -> list[tuple[int, str, str, str | None]]:
    """(line, language, body, mode): mode is None, "server" or "skip"."""
    text = (ROOT / "README.md").read_text()
    found = []
    for m in FENCE.finditer(text):
        mode = "skip" if m["reason"] else m["mode"]
        found.append((text.count("\n", 0, m.start("body")) + 1, m["lang"], m["body"], mode))
    return found


def runnable(mode: str | None) -> list[tuple[int, str, str]]:
    return [(line, lang, body) for line, lang, body, m in blocks() if m == mode]


def test_every_block_either_runs_or_says_why_not():
    found = blocks()
    assert len(found) >= 9
    assert len(runnable(None)) >= 4 and len(runnable("server")) >= 2


def test_every_skipped_block_names_the_test_that_covers_it():
    text = (ROOT / "README.md").read_text()
    reasons = [m["reason"] for m in FENCE.finditer(text) if m["reason"]]
    assert reasons and all("tests/" in r for r in reasons), reasons


def run_block(line: int, lang: str, body: str, cache: Path) -> None:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(Path(sys.executable).parents[1]),
        "JPEGWEIGHTS_CACHE": str(cache),
    }
    cmd = ["bash", "-eu", "-c", body] if lang == "sh" else [sys.executable, "-c", body]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    output = f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert proc.returncode == 0, f"README line {line}: exit {proc.returncode}\n{output}"
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("line, lang, body", runnable(None), ids=[f"line{b[0]}" for b in runnable(None)])
def test_readme_block_runs(line, lang, body, tmp_path):
    run_block(line, lang, body, tmp_path)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The server `make serve` runs: the repository's whole store, pretrained models included."""
    if not all((ROOT / "models" / m / "model.jpw").is_file() for m in ("mobilenet_v2", "all-minilm-l6-v2")):
        pytest.skip("the pretrained models are not imported: `make pretrained` (make test does it)")
    from tests.conftest import running_server

    with running_server(tmp_path_factory.mktemp("cache"), model_dir=ROOT / "models") as url:
        yield url


@pytest.mark.parametrize("line, lang, body", runnable("server"), ids=[f"line{b[0]}" for b in runnable("server")])
def test_readme_block_runs_against_a_server(line, lang, body, server, tmp_path):
    address = server.removeprefix("http://")
    run_block(line, lang, body.replace("127.0.0.1:8000", address).replace("localhost:8000", address), tmp_path)
