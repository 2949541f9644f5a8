"""60 s of the soak test (benchmarks/soak.py; `make soak` runs 10 minutes): 64 clients mix good
requests, crafted bad ones and model replacements against a real server, with 4096x4096 PNGs
and a /healthz probe alongside. No good request may fail, no bad one may get a 5xx, and the
server's RSS may grow by at most 200 MiB."""

from __future__ import annotations

import importlib.util
import sys

from tests.conftest import ROOT


def test_soak_60_seconds():
    spec = importlib.util.spec_from_file_location("benchmarks_soak", ROOT / "benchmarks" / "soak.py")
    soak = sys.modules["benchmarks_soak"] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    spec.loader.exec_module(soak)
    ok, report = soak.run(seconds=60, clients=64, max_rss_growth_mib=200)
    print(report)
    assert ok, report
