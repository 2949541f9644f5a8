"""schemathesis against the live OpenAPI schema of a real server: no input it generates gets a
5xx. The suite runs a bounded number of examples per operation (SCHEMATHESIS_EXAMPLES, 25 by
default, a few seconds); `make api-fuzz` runs 500 per operation (about 10,000 requests, 2 min).
Once as a reader (model management answers 403), once as the admin of a copy of the store, so
that uploads, deletes, loads and rescans are generated too."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import MNIST_STORE, running_server

CONFIG = Path(__file__).with_name("schemathesis.toml")
ADMIN = "schemathesis-admin"


def schemathesis(url: str, *options: str) -> str:
    examples = os.environ.get("SCHEMATHESIS_EXAMPLES", "25")
    cmd = [
        str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(CONFIG),
        "run", f"{url}/openapi.json",
        "--checks", "not_a_server_error", "--max-examples", examples, "--generation-deterministic", *options,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    summary = proc.stdout[-3000:]
    print(summary)  # shown by `make api-fuzz` (pytest -s)
    assert proc.returncode == 0, summary
    assert " passed" in summary and "failed" not in summary.split("Test cases:")[-1], summary
    return summary


def test_no_generated_request_gets_a_server_error(server):
    schemathesis(server)


def test_no_generated_request_of_an_admin_gets_a_server_error(tmp_path):
    shutil.copytree(MNIST_STORE, tmp_path / "store")  # deletes and uploads land here
    env = {"JPEGWEIGHTS_ADMIN_TOKEN": ADMIN}
    with running_server(tmp_path / "cache", env=env, model_dir=tmp_path / "store") as url:
        summary = schemathesis(url, "--header", f"Authorization: Bearer {ADMIN}")
    assert "Authentication failed" not in summary  # the management operations ran
