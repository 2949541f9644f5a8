"""schemathesis against the live OpenAPI schema of a real server: no input it generates gets a
5xx. The suite runs a bounded number of examples per operation (SCHEMATHESIS_EXAMPLES, 25 by
default, a few seconds); `make api-fuzz` runs 500 per operation (about 7,000 requests, 1 min)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_no_generated_request_gets_a_server_error(server):
    examples = os.environ.get("SCHEMATHESIS_EXAMPLES", "25")
    cmd = [
        str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(CONFIG),
        "run", f"{server}/openapi.json",
        "--checks", "not_a_server_error", "--max-examples", examples, "--generation-deterministic",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    summary = proc.stdout[-3000:]
    print(summary)  # shown by `make api-fuzz` (pytest -s)
    assert proc.returncode == 0, summary
    assert " passed" in summary and "failed" not in summary.split("Test cases:")[-1], summary
