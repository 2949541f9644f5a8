"""The figures in README.md and docs/ are their data: every ``<!-- figures: ... -->`` block is what
benchmarks/figures.py renders from the JSON a benchmark wrote, and the cheap benchmarks are rerun
here to check that their JSON still holds (within a tolerance: encodes may differ across CPUs)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("benchmarks_figures", ROOT / "benchmarks" / "figures.py")
figures = sys.modules["benchmarks_figures"] = importlib.util.module_from_spec(_spec)  # benchmarks/ is not a package
_spec.loader.exec_module(figures)

BLOCKS = [b for path in figures.documents() for b in figures.blocks(path)]


def test_the_docs_have_figure_blocks():
    readme = [b for b in BLOCKS if b.path.name == "README.md"]
    assert len(readme) >= 3 and len(BLOCKS) >= 9
    assert {b.spec.split()[0] for b in BLOCKS} == set(figures.RENDERERS)  # every renderer is used


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b.path.name}:{b.line}" for b in BLOCKS])
def test_figure_block_is_its_rendering(block):
    expected = figures.render(block.spec)
    assert expected.count("\n") >= 3  # a header, a rule and at least one row
    assert block.body == expected, (
        f"{block.path.name}:{block.line} is stale: run `python benchmarks/figures.py --write`"
    )


def test_a_stale_block_is_found_and_rewritten(tmp_path):
    doc = tmp_path / "doc.md"
    spec = "fidelity docs/results/fidelity-mobilenet_v2.json"
    right = figures.render(spec)
    doc.write_text(
        f"Intro.\n\n<!-- figures: {spec} -->\n{right.replace('2,346,511', '2,431,471')}<!-- /figures -->\n\nEnd.\n"
    )
    (block,) = figures.blocks(doc)
    assert block.body != figures.render(block.spec)
    assert figures.write(doc)
    assert doc.read_text() == f"Intro.\n\n<!-- figures: {spec} -->\n{right}<!-- /figures -->\n\nEnd.\n"
    assert not figures.write(doc)  # nothing left to rewrite


def test_an_unknown_renderer_is_an_error():
    with pytest.raises(KeyError):
        figures.render("no-such-renderer docs/results/benchmarks.json")


def rows_by_setting(report: dict) -> dict[str, dict]:
    return {r["setting"]: r for r in report["rows"] if r["method"] == "jpegweights"}


@pytest.mark.parametrize("source", sorted(figures.MEASURED))
def test_a_cheap_figure_holds_when_its_script_runs_again(source, tmp_path):
    """Bytes within 1% and the metric within 10% (relative) of what the docs show: the same
    encoder may pick other bytes on another CPU, never other fidelity by much."""
    if not (ROOT / "models" / "mobilenet_v2" / "model.jpw").is_file():
        pytest.skip("the pretrained models are not imported: `make pretrained` (make test does it)")
    out = tmp_path / "rerun.json"
    figures.measure(source, out)
    shown, measured = (
        rows_by_setting(json.loads((ROOT / source).read_text())),
        rows_by_setting(json.loads(out.read_text())),
    )
    assert shown.keys() == measured.keys()
    metric = "kl" if "kl" in next(iter(shown.values())) else "cosine"
    for setting, row in shown.items():
        assert measured[setting]["bytes"] == pytest.approx(row["bytes"], rel=0.01), setting
        assert measured[setting][metric] == pytest.approx(row[metric], rel=0.10), setting


def test_figures_cli_reports_stale_blocks(tmp_path, monkeypatch, capsys):
    """`figures.py` (no --write) exits 1 naming a stale block, 0 once rewritten."""
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    readme = tmp_path / "README.md"
    readme.write_text(readme.read_text().replace("2,346,511", "2,431,471"))
    monkeypatch.setattr(figures, "documents", lambda: [readme])
    monkeypatch.setattr(figures, "ROOT", ROOT)  # the JSON stays the repository's
    assert figures.main([]) == 1
    assert "README.md" in capsys.readouterr().out
    assert figures.main(["--write"]) == 0
    assert figures.main([]) == 0
