from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from jpegweights.cli.main import main


@pytest.fixture()
def model_file(tmp_path):
    g = torch.Generator().manual_seed(0)
    state = {
        "1.weight": torch.randn(64, 784, generator=g) * 0.05,
        "1.bias": torch.zeros(64),
        "3.weight": torch.randn(10, 64, generator=g),
    }
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    return path, state


def test_compress_inspect_decompress(model_file, tmp_path, capsys):
    path, state = model_file
    out = tmp_path / "model.jpw"
    assert main(["compress", str(path), str(out), "--quality", "30", "--quality-for", "1.*=40"]) == 0
    assert "smaller than model.safetensors" in capsys.readouterr().out
    assert main(["inspect", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in summary["tensors"]}
    assert rows["1.weight"]["coding"] == "jpeg" and rows["1.weight"]["quality"] == 40
    assert summary["file_bytes"] == out.stat().st_size and summary["ratio_vs_float32"] > 1
    assert main(["inspect", str(out)]) == 0
    assert "total:" in capsys.readouterr().out
    restored = tmp_path / "restored.safetensors"
    assert main(["decompress", str(out), str(restored)]) == 0
    back = load_file(str(restored))
    assert set(back) == set(state) and torch.equal(back["1.bias"], state["1.bias"])


def test_compress_compact_writes_a_smaller_version_4_package(model_file, tmp_path, capsys):
    path, _ = model_file
    sizes = {}
    for flag in ("--no-compact", "--compact"):
        out = tmp_path / f"{flag}.jpw"
        assert main(["compress", str(path), str(out), flag]) == 0
        assert main(["inspect", str(out), "--json"]) == 0
        summary = json.loads(capsys.readouterr().out.split("\n", 1)[1])
        sizes[flag] = (summary["version"], summary["file_bytes"])
    assert sizes["--no-compact"][0] == 3 and sizes["--compact"][0] == 4
    assert sizes["--compact"][1] < sizes["--no-compact"][1]


def test_compress_accepts_a_pt_state_dict(model_file, tmp_path):
    _, state = model_file
    pt = tmp_path / "model.pt"
    torch.save(state, pt)
    assert main(["compress", str(pt), str(tmp_path / "m.jpw")]) == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["inspect", "missing.jpw"], "No such file"),
        (["compress", "{model}", "out.jpw", "--quality", "0"], "quality must be an integer in 1..100"),
        (["compress", "{model}", "out.jpw", "--quality-for", "nonsense"], "expected NAME=VALUE"),
        (["compress", "{garbage}", "out.jpw"], "not a valid safetensors file"),
        (["inspect", "{garbage}"], "header"),
    ],
)
def test_errors_exit_1_with_one_line(model_file, tmp_path, capsys, argv, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    argv = [a.format(model=model_file[0], garbage=garbage) for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_usage_error_exits_2(capsys):
    assert main(["compress"]) == 2
    assert "usage" in capsys.readouterr().err


def test_inspect_into_a_closed_pipe_exits_quietly(tmp_path):
    """`jpegweights inspect --json big.jpw | head -1`: no traceback, no 'Broken pipe' noise."""
    import subprocess
    import sys

    import torch

    from jpegweights.codec import save_file

    path = tmp_path / "many.jpw"
    save_file({f"layer{i}.bias": torch.zeros(4) for i in range(3000)}, path)  # ~600 KB of JSON, more than a pipe holds
    proc = subprocess.Popen(
        [sys.executable, "-m", "jpegweights.cli.main", "inspect", "--json", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout.readline().strip() == b"{"
    proc.stdout.close()  # what head does after its lines
    assert proc.wait(60) == 141
    assert proc.stderr.read() == b""
