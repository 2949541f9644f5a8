"""The CLI's failures are one clean line, and come before any slow work."""

from __future__ import annotations

import json
import socket

import pytest
import torch

from jpegweights.cli.main import main
from jpegweights.service.store import ModelStore
from tests.conftest import MNIST_STORE


def test_serve_on_a_busy_port_fails_in_one_line_before_loading_any_model(monkeypatch, capsys):
    loads: list[str] = []
    monkeypatch.setattr(ModelStore, "load_all", lambda self: loads.append("load_all"))
    with socket.create_server(("127.0.0.1", 0)) as busy:  # bound and listening: the port is taken
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port), "--model-dir", str(MNIST_STORE)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"jpegweights serve: error: cannot listen on 127.0.0.1:{port}: ")
    assert "in use" in err and len(err.strip().splitlines()) == 1, err
    assert loads == [], "no model is loaded for a server that cannot listen"


@pytest.fixture()
def full_model(tmp_path):
    """A whole pickled module, not a state_dict: weights_only=True refuses it, and torch's
    message runs over several lines with terminal escape codes."""
    path = tmp_path / "full.pt"
    torch.save(torch.nn.Linear(4, 3), path)
    return path


def test_a_full_model_pt_gets_one_clean_line_from_compress_and_import(tmp_path, full_model, capsys):
    architecture = tmp_path / "architecture.json"
    architecture.write_text(json.dumps({"kind": "python", "factory": "torch.nn:Linear"}))
    for argv in (
        ["compress", str(full_model), str(tmp_path / "a.jpw")],
        ["import", "state", str(full_model), "--architecture", str(architecture), "-o", str(tmp_path / "b.jpw")],
    ):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith(f"jpegweights {argv[0]}: error: {full_model}: holds pickled objects, not only tensors")
        assert err.endswith("save its state_dict instead: torch.save(model.state_dict(), path)\n"), err
        assert len(err.splitlines()) == 1 and err.endswith("\n"), err
        assert err[:-1].isprintable() and "\x1b" not in err and "  " not in err, repr(err)
