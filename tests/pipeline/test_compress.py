"""``jpegweights.compress`` called as a library, on the bundled MNIST MLP: the whole pipeline in one
call, and the CLI a thin shell over it (the same bytes for the same arguments)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

import jpegweights
from jpegweights import handlers
from jpegweights.cli.main import main
from jpegweights.codec import EncodeConfig, decode, load_manifest
from jpegweights.handlers import Limits
from jpegweights.handlers.errors import CalibrationError
from jpegweights.pipeline import Compressed, compress, load_state_dict, read_inputs
from jpegweights.pipeline.calibrate import mean_kl


def kl(package: bytes, state: dict, folder) -> float:
    """Mean KL of the package's outputs from the float model's on the images in ``folder``."""
    manifest = load_manifest(package)
    reference, coded = handlers.load(manifest, state), handlers.load(manifest, decode(package))
    batch = reference.decode_request(read_inputs(folder), Limits(max_samples=1000))
    return mean_kl(reference.run(batch)["probabilities"], coded.run(batch)["probabilities"])


def test_a_library_call_meets_its_target_and_the_cli_writes_the_same_bytes(bundled_mlp, digits, tmp_path, capsys):
    source = bundled_mlp / "model.safetensors"
    lines: list[str] = []
    result = compress(
        source,
        data=digits / "calibrate",
        target=0.01,
        metric="kl",
        cache_dir=tmp_path / "library",
        progress=lines.append,
    )
    state, _, _ = load_state_dict(source)
    assert isinstance(result, Compressed) and result.metric == "kl" and result.evaluations > 0
    assert 0 < result.distortion <= 0.01 and result.fidelity == result.distortion
    assert kl(result.data, state, digits / "calibrate") <= 0.01  # the package, coded with every input's compensation
    assert dict(result.config.quality_for) and load_manifest(result.data)["config"]["quality_for"] == dict(
        result.config.quality_for
    )
    assert any(line.startswith("calibrating on 60 inputs") for line in lines) and any(
        line.startswith("chosen in") for line in lines
    )
    out = tmp_path / "cli.jpw"
    argv = [
        "compress",
        str(source),
        str(out),
        "--calibrate",
        str(digits / "calibrate"),
        "--max-kl",
        "0.01",
        "--cache-dir",
        str(tmp_path / "cli"),
    ]
    assert main(argv) == 0
    assert out.read_bytes() == result.data  # deterministic by design: the CLI only parses and calls
    untimed = lambda text: re.sub(r"chosen in \d+ s", "chosen in N s", text)  # noqa: E731
    assert untimed(capsys.readouterr().err) == untimed("\n".join(lines) + "\n")  # the same progress, on stderr


def test_a_state_dict_a_module_and_a_file_give_the_same_package(bundled_mlp, tmp_path):
    source = bundled_mlp / "model.safetensors"
    state, architecture, handler = load_state_dict(source)
    module = handlers.build(architecture)
    module.load_state_dict(state)
    config = EncodeConfig.preset("seed")
    from_file = compress(source, config)
    assert compress(state, config, architecture=architecture, handler=handler).data == from_file.data
    from_module = compress(
        module, config, architecture=architecture, handler=handler
    ).data  # its tensors in the module's order
    assert load_manifest(from_module) == load_manifest(from_file.data)
    assert all(torch.equal(v, decode(from_file.data)[k]) for k, v in decode(from_module).items())
    assert from_file.original_bytes == sum(t.numel() * t.element_size() for t in state.values())
    assert from_file.metric is None and from_file.distortion is None and from_file.fidelity is None
    assert (
        from_file.save(tmp_path / "m.jpw") == len(from_file.data)
        and (tmp_path / "m.jpw").read_bytes() == from_file.data
    )
    assert (bundled_mlp / "model.jpw").read_bytes() == from_file.data  # make report's package: the seed preset


@pytest.mark.parametrize("kwargs, error, message", [
    ({"target": 0.01, "metric": "kl"}, ValueError, "needs calibration data"),
    ({"data": "{digits}", "compensate": False}, ValueError, "only compensates errors"),
    ({"data": "{digits}", "target": 0.01}, ValueError, "needs a metric, one of"),
    ({"data": "{digits}", "target": 0.0, "metric": "kl"}, ValueError, "--max-kl must be positive"),
    ({"data": "{digits}", "target": 1.0, "metric": "cosine"}, ValueError, "--min-cosine must be in"),
    ({"data": "{digits}", "target": 0.01, "metric": "kl", "config": EncodeConfig(quality_for={"1.weight": 50})},
     ValueError, "give one"),
    ({"data": "{digits}", "architecture": None}, CalibrationError, "names no architecture"),
])  # fmt: skip
def test_arguments_that_do_not_go_together_raise_a_documented_error(bundled_mlp, digits, kwargs, error, message):
    state, _, _ = load_state_dict(bundled_mlp / "model.safetensors")
    kwargs = {k: digits / "calibrate" if v == "{digits}" else v for k, v in kwargs.items()}
    with pytest.raises(error, match=message):
        compress(state, **kwargs)


def test_a_source_of_another_kind_is_refused():
    with pytest.raises(TypeError, match="a state_dict, a torch.nn.Module or a path"):
        compress(torch.zeros(3))


def test_compress_is_at_the_top_and_imported_only_when_used():
    assert jpegweights.compress is compress
    code = "import sys, jpegweights, jpegweights.client; print([m for m in sys.modules if 'pipeline' in m])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
