"""Figures in the docs, rendered from the JSON that benchmarks write, so that text and data cannot drift.

A figure block in README.md or docs/*.md is a table between two markers:

    <!-- figures: RENDERER ARG ... -->
    | rendered | table |
    <!-- /figures -->

``RENDERER`` is a name in ``RENDERERS`` below; its ``ARG``s name JSON files (relative to the
repository's root: what a benchmark wrote, e.g. compare.py's ``docs/results/benchmarks.json``)
and what to show from them (a model). ``tests/test_docs_figures.py`` checks that every block is
its rendering, and reruns the scripts of ``MEASURED`` (cheap ones) to check that their JSON still
holds within a tolerance. After a benchmark has written new JSON:

    python benchmarks/figures.py            # names the blocks that differ; exit 1 if any
    python benchmarks/figures.py --write    # rewrites them
    python benchmarks/figures.py --measure docs/results/fidelity-mobilenet_v2.json  # reruns its script
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- figures: (?P<spec>[^>]*?) -->\n(?P<body>.*?)<!-- /figures -->", re.S)

# JSON results whose script is cheap enough for the test suite to rerun: source -> command
# (``{out}`` is where the rerun writes; the file itself is written with ``--measure``).
MEASURED: dict[str, list[str]] = {
    "docs/results/fidelity-mobilenet_v2.json": [
        "jpegweights",
        "fidelity",
        "models/mobilenet_v2/model.safetensors",
        "--package",
        "models/mobilenet_v2/model.jpw",
        "--data",
        "tests/data/photos",
        "--metric",
        "kl",
        "--qualities",
        "50,75",
        "--out",
        "{out}",
    ],
}


@dataclass(frozen=True)
class Block:
    """One marked figure in a document: where it is, what renders it, and the text it holds."""

    path: Path
    line: int
    spec: str
    body: str


def load(path: str) -> dict | list:
    return json.loads((ROOT / path).read_text())


def table(header: list[str], align: str, rows: list[list[str]]) -> str:
    """A Markdown table; ``align`` has one letter per column: l (left) or r (right)."""
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return "\n".join(["| " + " | ".join(header) + " |", rule, *("| " + " | ".join(r) + " |" for r in rows)]) + "\n"


def fidelity_of(row: dict) -> str:
    """A row's fidelity as compare.py shows it: accuracy, KL or cosine, whichever it has."""
    if "accuracy" in row:
        return f"{row['accuracy'] * 100:.2f}% ({row['change_points']:+.2f})"
    if "kl" in row:
        return f"KL {row['kl']:.4f}, top-1 {row['top1'] * 100:.1f}%"
    return f"cosine {row['cosine']:.5f} (min {row['cosine_min']:.5f})"


def fidelity(source: str) -> str:
    """``jpegweights fidelity``'s report: bytes and the metric per quality.

    >>> fidelity("docs/results/fidelity-mobilenet_v2.json").splitlines()[0]
    '| quality | bytes | mean KL |'
    """
    rows = [r for r in load(source)["rows"] if r["method"] == "jpegweights"]
    metric = "kl" if "kl" in rows[0] else "cosine"
    shown = [[r["setting"].removeprefix("q"), f"{r['bytes']:,}", f"{r[metric]:.5f}"] for r in rows]
    return table(["quality", "bytes", "mean KL" if metric == "kl" else "mean cosine"], "rrr", shown)


def compare(source: str, model: str) -> str:
    """One model's rows of compare.py's results, every column (docs/benchmarks.md)."""
    rows = load(source)[model]
    label = {"mobilenet_v2": "held-out mean KL, top-1 agreement", "all-minilm-l6-v2": "held-out mean cosine (min)"}
    header = [
        "method",
        "setting",
        "bytes",
        "× smaller",
        label.get(model, "test accuracy (change, points)"),
        "encode s",
        "decode s",
    ]
    shown = [
        [
            r["method"],
            r["setting"],
            f"{r['bytes']:,}",
            f"{r['ratio']:.2f}",
            fidelity_of(r),
            f"{r['encode_s']:.2f}",
            f"{r['decode_s']:.3f}",
        ]
        for r in rows
    ]
    return table(header, "llrrlrr", shown)


def summary(source: str, *models: str) -> str:
    """compare.py's results for several models, without float32 and 4-bit: the README's table."""
    results = load(source)
    shown = [
        [model, r["method"], r["setting"], f"{r['ratio']:.2f}", fidelity_of(r)]
        for model in models
        for r in results[model]
        if r["method"] not in ("float32", "4-bit")
    ]
    return table(["model", "method", "setting", "× smaller than float32", "fidelity (held out)"], "lllrl", shown)


HEADLINE = (
    "float32",
    "seed: JPEG file per tile q20",
    "jpegweights q20",
    "jpegweights --target-drop",
    "jpegweights finetune",
)


def report(*sources: str) -> str:
    """Headline rows of ``jpegweights evaluate``'s reports (the MNIST models): the float model,
    the seed's method, the bundled package, the --target-drop search and fine-tuning."""
    shown = []
    for source in sources:
        model = Path(source).parent.name
        for r in load(source)["rows"]:
            if r["method"] in HEADLINE or f"{r['method']} {r['setting']}" in HEADLINE:
                change = "" if r["method"] == "float32" else f"{r['change'] * 100:+.2f}"
                ratio = f"{r['ratio_vs_float32']:.1f}"
                shown.append(
                    [model, r["method"], r["setting"], f"{r['bytes']:,}", ratio, f"{r['accuracy'] * 100:.2f}%", change]
                )
    return table(
        ["model", "method", "setting", "bytes", "× smaller than float32", "test accuracy", "change (points)"],
        "lllrrrr",
        shown,
    )


def qualities(source: str) -> str:
    """codec_choices.py --json: each MNIST model whole at each quality, models side by side."""
    rows = load(source)["rows"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    by = {(r["model"], r["quality"]): r for r in rows}
    header = ["quality"] + [f"{m} {c}" for m in models for c in ("bytes", "× f32", "Δ accuracy")]
    shown = [
        [str(q)]
        + [
            v
            for m in models
            for v in (f"{by[m, q]['bytes']:,}", f"{by[m, q]['ratio']:.1f}", f"{by[m, q]['change_points']:+.2f}")
        ]
        for q in sorted({r["quality"] for r in rows})
    ]
    return table(header, "r" * len(header), shown)


def cold_start(source: str) -> str:
    """ray_cold_start.py --out: a replica's cold start, the compact package against float32."""
    result = load(source)
    forms = result["forms"]
    shown = [
        [form, f"{r['bytes'] / 1e6:.1f}", f"{r['fetch_s']:.2f}", f"{r['decode_s']:.2f}", f"{r['cold_start_s']:.2f}"]
        for form, r in forms.items()
    ]
    c, f = forms["compact"], forms["float32"]
    ratios = [f["bytes"] / c["bytes"], f["fetch_s"] / c["fetch_s"], f["decode_s"] / c["decode_s"]]
    shown.append(["float32 / compact", *(f"{x:.2f}×" for x in ratios), f"{f['cold_start_s'] / c['cold_start_s']:.2f}×"])
    header = [f"{result['model']}, {result['rate']} link", "MB", "fetch s", "decode s", "cold start s"]
    return table(header, "lrrrr", shown)


def first_prediction(source: str) -> str:
    """first_prediction.py --out: time to the first answer from an empty cache, .jpw against float32."""
    result = load(source)
    header = [
        "link",
        "process",
        f".jpw s ({result['jpw_bytes']:,} B)",
        f"float32 safetensors s ({result['float32_bytes']:,} B)",
        "ratio",
        ".jpw ready after its last byte s",
    ]
    rows = [
        [
            f"{r['link_mbit']:g} Mbit/s",
            r["process"],
            f"{r['jpw_s']:.3f}",
            f"{r['float32_s']:.3f}",
            f"{r['ratio']:.1f}×",
            f"{r['after_last_byte_s']:.3f} (its last byte at {r['download_s']:.3f})",
        ]
        for r in result["rows"]
    ]
    return table(header, "llrrrr", rows)


def memory(source: str) -> str:
    """memory.py --out: each step's peak RSS above its imports, against the float32 size."""
    result = load(source)
    names = {
        "import": "`jpegweights import huggingface`",
        "decode": "`codec.load_package`",
        "stream": "`StreamDecoder`, 64 KiB at a time (the client's download)",
        "load": "`PackagedModel.from_package` (decode and build)",
        "search": "`jpegweights compress --calibrate --min-cosine 0.995`",
    }
    rows = [
        [names[r["operation"]], f"{r['peak_above_imports_bytes'] / 1e6:,.0f}", f"{r['times_float32']:.2f}×"]
        for r in result["rows"]
    ]
    header = [f"{result['model']} (float32 {result['float32_bytes'] / 1e6:.0f} MB)", "peak MB", "× float32"]
    return table(header, "lrr", rows)


def transfer(source: str) -> str:
    """calibration_transfer.py --out: a search on one kind of input, measured on another."""
    result = load(source)
    metric, kind = result["metric"], result["kind"]
    shown = lambda v: "–" if v is None else f"{v:.5f}"  # noqa: E731
    rows = [
        [
            r["model"],
            r["calibration"],
            f"{r['bytes']:,}",
            shown(r["calibrated"]),
            shown(r["held_out"]),
            "–" if r["minutes"] is None else f"{r['minutes']:.1f}",
        ]  # fmt: skip
        for r in result["rows"]
    ]
    name = "KL" if metric == "kl" else metric
    header = ["model", f"searched for {name} {result['target']} on", "bytes", f"{name} on {kind}",
              f"held-out {name}", "search min"]  # fmt: skip
    return table(header, "llrrrr", rows)


def runtimes(source: str) -> str:
    """runtimes.py --out: forward samples/s per runtime and thread layout, quiet and shared."""
    result = load(source)
    served = {
        r["model"]: r
        for r in result["rows"]
        if r["runtime"] == "eager" and r["threads"] == 1 and r["workers"] == result["cpus"]
    }
    rows = [
        [
            r["model"],
            r["runtime"],
            f"{r['workers']} × {r['threads']}",
            f"{r['quiet']:,.0f}",
            f"{r['quiet'] / served[r['model']]['quiet']:.2f}",
            f"{r['shared']:,.0f}",
            f"{r['shared'] / r['quiet']:.0%}",
        ]  # fmt: skip
        for r in result["rows"]
    ]
    header = ["model", "runtime", "workers × threads", "samples/s", "× eager " + f"{result['cpus']} × 1",
              "beside a busy process", "kept"]  # fmt: skip
    return table(header, "lllrrrr", rows)


def search_speed(source: str) -> str:
    """search_speed.py --out: the calibrated search's seconds, quiet and beside a busy process."""
    result = load(source)
    rows = [
        [
            f"{r['rule']}: {r['layout']}",
            f"{r['quiet_s']:.1f}",
            f"{r['shared_s']:.1f}",
            f"{r['quiet_s'] / r['shared_s']:.0%}",
        ]
        for r in result["rows"]
    ]
    header = [f"{result['model']}, --min-cosine {result['target']}", "quiet s", "beside a busy process s", "kept"]
    return table(header, "lrrr", rows)


RENDERERS: dict[str, Callable[..., str]] = {
    "runtimes": runtimes,
    "search_speed": search_speed,
    "transfer": transfer,
    "memory": memory,
    "cold_start": cold_start,
    "first_prediction": first_prediction,
    "fidelity": fidelity,
    "compare": compare,
    "summary": summary,
    "report": report,
    "qualities": qualities,
}


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(path: Path) -> list[Block]:
    text = path.read_text()
    return [Block(path, text.count("\n", 0, m.start()) + 1, m["spec"], m["body"]) for m in BLOCK.finditer(text)]


def render(spec: str) -> str:
    """The text a block with this spec must hold. Raises ``KeyError`` for an unknown renderer.

    >>> render("fidelity docs/results/fidelity-mobilenet_v2.json").count("\\n") >= 4
    True
    """
    name, *args = spec.split()
    return RENDERERS[name](*args)


def write(path: Path) -> bool:
    """Rewrite every block of one document with its rendering; True if anything changed."""
    text = path.read_text()
    new = BLOCK.sub(lambda m: f"<!-- figures: {m['spec']} -->\n{render(m['spec'])}<!-- /figures -->", text)
    if new != text:
        path.write_text(new)
    return new != text


def measure(source: str, out: Path) -> None:
    """Rerun the script behind a ``MEASURED`` source, writing its JSON to ``out``."""
    command = [arg.replace("{out}", str(out)) for arg in MEASURED[source]]
    command[0] = str(Path(sys.executable).parent / command[0])  # the venv's own command
    subprocess.run(command, cwd=ROOT, check=True)


def _name(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true", help="rewrite the blocks that differ from their rendering")
    p.add_argument(
        "--measure", choices=sorted(MEASURED), action="append", default=[], help="rerun a source's script first"
    )
    args = p.parse_args(argv)
    for source in args.measure:
        measure(source, ROOT / source)
    stale = [b for path in documents() for b in blocks(path) if b.body != render(b.spec)]
    if args.write:
        changed = [path for path in documents() if write(path)]
        print("\n".join(f"rewrote {_name(path)}" for path in changed) or "nothing to rewrite")
        return 0
    for b in stale:
        print(f"{_name(b.path)}:{b.line}: {b.spec} differs from its rendering")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
