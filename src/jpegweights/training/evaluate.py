"""Rate–distortion report: a float model under JPEG at many qualities, beside the usual baselines.

>>> rows = evaluate(state, spec, test_split, qualities=[20, 10])
>>> write_report(rows, "reports/mnist-mlp", ...)

Every row is measured here, in one run: bytes of the whole model as it would be stored, its
test accuracy, and the change against the float32 model. ``evaluate_model`` is the whole job
(``jpegweights evaluate``): a model file and MNIST's files in, the report (and a package) out.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as safetensors_save

from jpegweights.codec import EncodeConfig, decode, encode, load_manifest, save_file
from jpegweights.codec.policy import choose
from jpegweights.handlers import build
from jpegweights.pipeline import load_model

from .mnist import VAL_SIZE, Split, held_out, load_mnist
from .train import accuracy, predict

QUALITIES = (100, 90, 75, 50, 30, 20, 10, 5, 1)


@dataclass
class Row:
    method: str
    setting: str
    bytes: int
    ratio_vs_float32: float
    accuracy: float
    change: float


def float32_bytes(state: dict[str, torch.Tensor]) -> int:
    return len(safetensors_save({k: v.float().contiguous() for k, v in state.items()}))


def seed_literal(state: dict[str, torch.Tensor], quality: int) -> tuple[int, dict[str, torch.Tensor]]:
    """The published experiment, literally: every 784-wide row as its own 28×28 JPEG file
    (Pillow, its default tables at ``quality``), min/max per tile as float32; everything else
    stays float32. Returns (bytes, the reconstructed state_dict)."""
    from PIL import Image

    out, total = {}, 0
    for name, t in state.items():
        if t.dim() == 2 and t.shape[1] == 784:
            rows = []
            for row in t.float():
                lo, hi = float(row.min()), float(row.max())
                scale = (hi - lo) / 255 or 1.0
                tile = ((row - lo) / scale).round().clamp(0, 255).to(torch.uint8).reshape(28, 28).numpy()
                buf = io.BytesIO()
                Image.fromarray(tile, mode="L").save(buf, format="JPEG", quality=quality)
                total += len(buf.getvalue()) + 8  # the file, and its float32 min and max
                back = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"), dtype=np.float32)
                rows.append(torch.from_numpy(back).reshape(784) * scale + lo)
            out[name] = torch.stack(rows).to(t.dtype)
        else:
            out[name] = t
            total += len(safetensors_save({name: t.float().contiguous()})) - 8  # minus the length prefix
    return total, out


def evaluate(
    state: dict[str, torch.Tensor],
    spec: dict[str, Any],
    test: Split,
    qualities: Sequence[int] = QUALITIES,
    extra: Sequence[tuple[str, str, bytes]] = (),
    log: Callable[[str], None] = lambda _: None,
    settings: EncodeConfig | None = None,
) -> list[Row]:
    """Measure every method on ``test``; ``extra`` adds (method, setting, .jpw bytes) rows.
    ``settings``: those of the int8 and JPEG rows (default ``EncodeConfig()``)."""
    settings = EncodeConfig() if settings is None else settings
    model = build(spec).eval()
    f32 = float32_bytes(state)

    def measure(method: str, setting: str, nbytes: int, weights: dict[str, torch.Tensor]) -> Row:
        model.load_state_dict({k: v.float() for k, v in weights.items()})
        acc = accuracy(model, spec, test)
        row = Row(method, setting, nbytes, f32 / nbytes, acc, acc - base)
        log(f"{method:<24} {setting:<16} {nbytes:>10,} B {row.ratio_vs_float32:6.1f}x  acc {acc * 100:.2f}%")
        return row

    model.load_state_dict(state)
    base = accuracy(model, spec, test)
    rows = [Row("float32", "-", f32, 1.0, base, 0.0)]
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    rows.append(measure("float16", "-", len(safetensors_save(half)), half))
    # packages carry their architecture, so each row's bytes are those of the file a server ships
    int8 = encode(state, replace(settings, coding="int8", lossless_below=0), architecture=spec)
    rows.append(measure("int8 per-row", "-", len(int8), decode(int8)))
    if any(t.dim() == 2 and t.shape[1] == 784 for t in state.values()):
        for q in qualities:
            nbytes, weights = seed_literal(state, q)
            rows.append(measure("seed: JPEG file per tile", f"q{q}", nbytes, weights))
    for q in qualities:
        data = encode(state, replace(settings, quality=q), architecture=spec)
        rows.append(measure("jpegweights", f"q{q}", len(data), decode(data)))
    for method, setting, data in extra:
        rows.append(measure(method, setting, len(data), decode(data)))
    return rows


# Matrices this large or larger get a coding searched (the CNN's 5x5 kernels of 6->16 channels,
# 2,400 values, included).
SEARCH_FROM = 256


def search_qualities(
    state: dict[str, torch.Tensor],
    spec: dict[str, Any],
    validation: Split,
    target_drop: float,
    qualities: Sequence[int] = (5, 8, 10, 12, 15, 20, 25, 30, 40, 50, 75, 90),
    log: Callable[[str], None] = lambda _: None,
    settings: EncodeConfig | None = None,
) -> EncodeConfig:
    """Per-tensor codings that minimize bytes while validation accuracy stays within
    ``target_drop`` (a fraction, 0.003 = 0.3 points) of the float model.

    Greedy: every coded tensor starts as int8; each step takes, over all tensors, the move to a
    cheaper coding that saves the most bytes per point of validation accuracy lost, among moves
    that keep the drop within the target. Stops when no move fits. Matrices under
    ``SEARCH_FROM`` values and 1-D tensors (biases) are stored raw, in float16.

    A move fits when the drop *plus one standard error* stays within the target. The error of
    a paired accuracy difference is sqrt(d)/n, d the images on which the two models disagree
    (McNemar). Without it the greedy search overfits the validation split: a 0.3-point budget
    on 5,000 validation images became a 0.6-point drop on the test set.

    ``settings``: those every candidate and the result start from (default ``EncodeConfig()``).
    """
    model = build(spec).eval()
    model.load_state_dict(state)
    reference = predict(model, spec, validation.images)
    base = (reference == validation.labels).float().mean().item()
    default = EncodeConfig() if settings is None else settings
    options: dict[str, list[tuple[int, dict[str, Any], torch.Tensor]]] = {}  # name -> [(bytes, config, decoded)]
    for name, t in state.items():
        if not t.is_floating_point() or t.dim() < 2 or t.numel() < SEARCH_FROM:
            continue
        candidates = [{"coding": "int8"}] + [{"coding": "jpeg", "quality": q} for q in qualities]
        opts = []
        for c in candidates:
            cfg = replace(default, coding=c["coding"], quality=c.get("quality", default.quality))
            coded = choose(name, t, cfg)
            weights = coded.decode()
            opts.append((coded.nbytes, c, weights))
        options[name] = sorted(opts, key=lambda o: -o[0])  # most bytes (most accurate) first
    current = {name: 0 for name in options}  # index into options[name]

    def val_accuracy(choice: dict[str, int]) -> tuple[float, float]:
        """(accuracy, standard error of its difference from the float model)."""
        weights = dict(state)
        weights.update({n: options[n][i][2] for n, i in choice.items()})
        model.load_state_dict(weights)
        pred = predict(model, spec, validation.images)
        disagree = int((pred != reference).sum())
        return (pred == validation.labels).float().mean().item(), math.sqrt(disagree) / len(validation)

    acc, _ = val_accuracy(current)
    while True:
        best = None
        for name, i in current.items():
            for j in range(i + 1, len(options[name])):
                saved = options[name][i][0] - options[name][j][0]
                if saved <= 0:
                    continue
                trial = {**current, name: j}
                trial_acc, stderr = val_accuracy(trial)
                if base - trial_acc + stderr > target_drop:
                    continue
                score = saved / max(acc - trial_acc, 1e-4)
                if best is None or score > best[0]:
                    best = (score, name, j, trial_acc)
        if best is None:
            break
        _, name, j, acc = best
        current[name] = j
        log(f"{name}: {options[name][j][1]} -> validation accuracy {acc * 100:.2f}% ({(acc - base) * 100:+.2f})")
    quality_for = {n: options[n][i][1]["quality"] for n, i in current.items() if options[n][i][1]["coding"] == "jpeg"}
    coding_for = {n: options[n][i][1]["coding"] for n, i in current.items()}
    # biases: 2 bytes each; the compact container, whose deflated header is a tenth of a small model's file otherwise
    return replace(default, quality_for=quality_for, coding_for=coding_for, raw_dtype="float16", compact=True)


def write_report(rows: list[Row], out: Path, title: str, notes: Sequence[str] = ()) -> None:
    """report.json, report.md and accuracy_vs_size.png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(
        json.dumps({"title": title, "notes": list(notes), "rows": [asdict(r) for r in rows]}, indent=2)
    )
    lines = [
        f"# {title}",
        "",
        *notes,
        "",
        "| method | setting | bytes | × smaller than float32 | test accuracy | change (points) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.method} | {r.setting} | {r.bytes:,} | {r.ratio_vs_float32:.1f} | {r.accuracy * 100:.2f}% "
            f"| {r.change * 100:+.2f} |"
        )
    (out / "report.md").write_text("\n".join(lines) + "\n")
    plot(rows, out / "accuracy_vs_size.png", title)


def plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    methods = dict.fromkeys(r.method for r in rows)
    for method in methods:
        pts = sorted((r.bytes, r.accuracy * 100) for r in rows if r.method == method)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if len(pts) > 1 else "s", label=method)
    top = max(r.accuracy for r in rows) * 100
    ax.set_xscale("log")
    ax.set_ylim(max(0, top - 10), top + 1)
    ax.set_xlabel("whole model, bytes (log scale)")
    ax.set_ylabel("test accuracy, %")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def tiles_picture(original: torch.Tensor, decoded: torch.Tensor, path: Path, n: int = 64, quality: int = 20) -> None:
    """The seed's picture: the first ``n`` 28×28 tiles of a 784-wide layer, original | decoded."""
    from PIL import Image

    def grid(t: torch.Tensor) -> np.ndarray:
        t = t[:n].float()
        lo, hi = float(original[:n].min()), float(original[:n].max())  # one scale for both halves
        tiles = ((t - lo) / (hi - lo) * 255).clamp(0, 255).to(torch.uint8).reshape(-1, 28, 28).numpy()
        side = math.isqrt(n)
        return tiles[: side * side].reshape(side, side, 28, 28).transpose(0, 2, 1, 3).reshape(side * 28, side * 28)

    left, right = grid(original), grid(decoded)
    gap = np.full((left.shape[0], 8), 255, dtype=np.uint8)
    image = Image.fromarray(np.concatenate([left, gap, right], axis=1), mode="L")
    image = image.resize((image.width * 2, image.height * 2), Image.NEAREST)
    image.save(path)


@dataclass
class Evaluation:
    """What ``evaluate_model`` measured and wrote."""

    out: Path  # the report's folder: report.json, report.md, accuracy_vs_size.png (and tiles_q20.png)
    rows: list[Row]
    package_bytes: int | None = None  # the size of the package written to ``package``, if asked for


def evaluate_model(
    model: str | Path,
    data_dir: str | Path,
    qualities: Sequence[int] = QUALITIES,
    *,
    settings: EncodeConfig | None = None,
    target_drop: float | None = None,
    finetuned: Sequence[str | Path] = (),
    out: str | Path | None = None,
    package: str | Path | None = None,
    limit: int | None = None,
    name: str | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> Evaluation:
    """The rate-distortion report of a model file ``train_and_save`` wrote, on the test split in
    ``data_dir`` (its first ``limit`` images): each quality coded with ``settings`` (default
    ``EncodeConfig()``) beside the baselines, plus a row per package in ``finetuned``.
    ``target_drop`` (in accuracy points) adds the package ``search_qualities`` finds on the
    validation split; ``package`` saves it there (without a search: quality 20). The report goes
    to ``out``, default reports/<name> (``name``: the folder of a model.safetensors, else the stem).

    >>> evaluate_model("models/mnist-mlp/model.safetensors", "../shared/data/mnist", [20]).rows[-1].setting
    'q20'
    """
    model = Path(model)
    state, spec = load_model(model)
    test = load_mnist(data_dir, "test")
    if limit:
        test = test.subset(limit)
    name = name or (model.parent.name if model.stem == "model" else model.stem)
    out = Path("reports") / name if out is None else Path(out)
    settings = EncodeConfig() if settings is None else settings
    notes = [
        f"Model: `{model.name}`; test set: the {len(test):,} test images of `--data-dir` (IDX); "
        "bytes are whole-model files."
    ]
    extra, package_config = [], None
    if target_drop is not None:
        package_config, note = _searched(state, spec, data_dir, target_drop, settings, log)
        notes.append(note)
        extra.append(("jpegweights --target-drop", f"{target_drop} points", encode(state, package_config, spec)))
    for path in finetuned:
        data = Path(path).read_bytes()
        extra.append(("jpegweights finetune", f"q{load_manifest(data)['config']['quality']}", data))
    rows = evaluate(state, spec, test, qualities, extra, log=log, settings=settings)
    write_report(rows, out, f"{name}: accuracy against size", notes)
    first = next((k for k, v in state.items() if v.dim() == 2 and v.shape[1] == 784), None)
    if first:  # the seed's picture of its first layer, at the seed's quality
        decoded = decode(encode({first: state[first]}, replace(settings, quality=20, coding="jpeg")))[first]
        tiles_picture(state[first], decoded, out / "tiles_q20.png")
    size = None
    if package is not None:
        size = save_file(state, package, package_config or replace(settings, quality=20), spec)
    return Evaluation(out, rows, size)


def _searched(
    state: dict[str, torch.Tensor],
    spec: dict[str, Any],
    data_dir: str | Path,
    target_drop: float,
    settings: EncodeConfig,
    log: Callable[[str], None],
) -> tuple[EncodeConfig, str]:
    """``search_qualities`` on the validation split ``held_out`` keeps; (its config, the report's note)."""
    _, validation = held_out(load_mnist(data_dir, "train"))
    config = search_qualities(state, spec, validation, target_drop / 100, log=log, settings=settings)
    chosen = {**dict(config.coding_for), **{k: f"jpeg q{q}" for k, q in config.quality_for}}
    return config, (
        f"--target-drop {target_drop}: per-tensor codings chosen on {VAL_SIZE:,} held-out training images: "
        f"{json.dumps(chosen)}"
    )
