"""Compression-aware fine-tuning: the model learns to live inside its package.

>>> config = pin(state, EncodeConfig(quality=2, qtable="flat", ranges="row"))
>>> result = finetune(state, spec, train_split, validation_split, config, epochs=6)
>>> save_file(result.state, "model-ft.jpw", result.config, spec)

Straight-through: each step's forward pass uses every coded tensor exactly as the package will
decode it (the codec's own encode and decode of the current float weights), and the gradient
updates the float weights as if the coding were the identity. What is trained is what ships:
``pin`` fixes each tensor's coding and layout, so the final ``encode`` codes each tensor as
training did.

Labelled data trains on cross-entropy; ``distill=True`` ignores the labels and trains on the KL
divergence from the float model's outputs, for data without labels (validation then measures
how often the coded model agrees with the float one).

``finetune_idx`` is the whole job (``jpegweights finetune --data-dir``): a model file and IDX
files in, the fine-tuned package (and a report) out.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from jpegweights import cpus
from jpegweights.codec import CodecError, EncodeConfig, decode, encode
from jpegweights.codec.policy import choose
from jpegweights.files import write_atomic
from jpegweights.handlers import build
from jpegweights.pipeline import load_model

from .evaluate import Row, float32_bytes, write_report
from .mnist import VAL_SIZE, Split, held_out, load_mnist
from .train import _inputs, accuracy

# What fine-tuning starts from: quality 5 with a flat table and one range per tensor (the MLP's
# 2 KB of per-row scales cost more than the accuracy they buy once training adapts), matrices of
# 256 values and more coded, the rest in float16, in the compact format (its deflated header is
# a third of the CNN's file otherwise; docs/finetune.md measures the choices).
FINETUNE_DEFAULTS: dict[str, Any] = {
    "quality": 5,
    "qtable": "flat",
    "ranges": "tensor",
    "raw_dtype": "float16",
    "lossless_below": 256,
    "compact": True,
}


class FinetuneError(ValueError):
    """Fine-tuning cannot go on (data that does not fit, NaN losses, divergence): nothing is written."""


def pin(state: Mapping[str, torch.Tensor], config: EncodeConfig) -> EncodeConfig:
    """``config`` with each tensor's coding (and a JPEG tensor's layout) fixed as the codec
    chooses them for ``state`` now; a later ``encode`` with the result codes each tensor the same
    way whatever its values become. The table must be fixed (``flat`` or ``standard``)."""
    if config.qtable == "auto":
        raise FinetuneError("fine-tuning needs a fixed table: qtable 'flat' or 'standard', not 'auto'")
    coding, layout = dict(config.coding_for), dict(config.layout_for)
    for name, t in state.items():
        entry = choose(name, t, config).entry
        coding[name] = entry["coding"]
        if entry["coding"] == "jpeg":
            layout[name] = f"rows:{entry['tile'][0]}x{entry['tile'][1]}" if entry["tile"] else entry["layout"]
    return EncodeConfig.from_dict({**config.to_dict(), "coding_for": coding, "layout_for": layout})


def coded(state: Mapping[str, torch.Tensor], config: EncodeConfig) -> dict[str, torch.Tensor]:
    """Every tensor as the package decodes it (on the CPU: the codec's JPEG path)."""
    return {name: choose(name, t.detach().cpu(), config).decode() for name, t in state.items()}


@dataclass
class Epoch:
    epoch: int
    loss: float  # mean training loss
    accuracy: float  # validation accuracy of the coded model
    seconds: float


@dataclass
class Finetuned:
    state: dict[str, torch.Tensor]  # float weights: their coding (``config``) is the model
    config: EncodeConfig
    start_accuracy: float  # validation accuracy of the coded model before fine-tuning
    history: list[Epoch] = field(default_factory=list)
    stopped: str = ""


def straight_through(params: Mapping[str, torch.Tensor], config: EncodeConfig, where: str) -> dict[str, torch.Tensor]:
    """Each parameter plus the package's value minus its own, without a gradient through the
    difference: the forward pass runs the coded weights, the gradient reaches the float ones."""
    with torch.no_grad():
        try:
            shipped = coded(params, config)
        except CodecError as exc:  # e.g. weights grown past what the coding can hold
            raise FinetuneError(
                f"the weights cannot be coded any more at {where} ({exc}): lower the learning rate (--lr)"
            ) from None
        offsets = {n: shipped[n].to(p.device) - p for n, p in params.items()}
    return {n: p + offsets[n] for n, p in params.items()}


def step(
    opt: torch.optim.Optimizer,
    schedule: Any,
    loss: torch.Tensor,
    losses: list[float],
    reference: float | None,
    where: str,
    quality: int,
) -> float:
    """One optimizer step on ``loss``, after refusing a NaN and divergence (the mean of the last
    20 losses over 4x the first one + 1). Returns the first loss: the coded model's before any step."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FinetuneError(f"the loss became {value} at {where}: lower the learning rate (--lr) or raise the quality")
    losses.append(value)
    reference = value if reference is None else reference
    if len(losses) >= 20 and (recent := sum(losses[-20:]) / 20) > 4 * reference + 1:
        raise FinetuneError(
            f"training diverges at quality {quality} (the loss grew from {reference:.3f} to {recent:.3f}): "
            "lower the learning rate (--lr) or raise the quality"
        )
    opt.zero_grad()
    loss.backward()
    opt.step()
    if schedule is not None:
        schedule.step()
    return reference


@torch.no_grad()
def _predictions(model: nn.Module, spec: dict[str, Any], data: Split, device: str) -> torch.Tensor:
    return torch.cat(
        [model(_inputs(spec, data.images[i : i + 2000]).to(device)).argmax(1).cpu() for i in range(0, len(data), 2000)]
    )


@torch.no_grad()
def _accuracy(
    model: nn.Module, spec: dict[str, Any], weights: Mapping[str, torch.Tensor], data: Split, device: str
) -> float:
    correct = 0
    for i in range(0, len(data), 2000):
        x = _inputs(spec, data.images[i : i + 2000]).to(device)
        out = torch.func.functional_call(model, {k: v.to(device) for k, v in weights.items()}, (x,))
        correct += int((out.argmax(1).cpu() == data.labels[i : i + 2000]).sum())
    return correct / len(data)


@cpus.torch_threads()  # no more threads than the CPUs this process may use
def finetune(
    state: Mapping[str, torch.Tensor],
    spec: dict[str, Any],
    train: Split,
    validation: Split,
    config: EncodeConfig,
    *,
    epochs: int = 6,
    lr: float = 1e-3,
    batch_size: int = 128,
    patience: int = 3,
    distill: bool = False,
    rederive: bool = False,
    cosine: bool = True,
    seed: int = 0,
    device: str = "cpu",
    progress: bool | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> Finetuned:
    """Fine-tune ``state`` (float weights of ``spec``) so that its coding under ``config`` (see
    ``pin``) is accurate. Keeps the weights whose coded model is best on ``validation``; stops
    after ``patience`` epochs without improvement. ``rederive`` re-pins the codings at each
    epoch; ``cosine`` decays the learning rate to 0 over the epochs. Raises ``FinetuneError`` on
    data that does not fit, a NaN loss, divergence, or no improvement at all. Buffers (e.g.
    BatchNorm statistics) train uncoded; the validation and the package code them."""
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise FinetuneError("epochs and batch size must be at least 1, the learning rate positive")
    torch.manual_seed(seed)
    model = build(spec).to(device)
    model.load_state_dict(dict(state))
    model.train()
    params = dict(model.named_parameters())
    buffers = {k: v for k, v in model.state_dict().items() if k not in params}
    teacher = copy.deepcopy(model).eval() if distill else None
    try:
        x_all, y_all = _inputs(spec, train.images), train.labels
        with torch.no_grad():
            classes = model(x_all[:2].to(device)).shape[1]
        _inputs(spec, validation.images[:1])
    except RuntimeError as exc:
        raise FinetuneError(f"the data does not fit the model: {str(exc).splitlines()[0][:200]}") from None
    if not distill and int(y_all.max()) >= classes:
        raise FinetuneError(f"the data has label {int(y_all.max())}, the model {classes} classes")
    if teacher is not None:  # without labels, the coded model is judged by its agreement with the float one
        validation = Split(validation.images, _predictions(teacher, spec, validation, device))

    def current() -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    best_weights = current()
    best = _accuracy(model, spec, coded(best_weights, config), validation, device)
    result = Finetuned(best_weights, config, best)
    log(f"coded before fine-tuning: validation accuracy {best * 100:.2f}%")
    gen = torch.Generator().manual_seed(seed)
    show = sys.stderr.isatty() if progress is None else progress
    opt = torch.optim.Adam(params.values(), lr=lr)
    steps = epochs * math.ceil(len(train) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if cosine else None
    reference: float | None = None
    stale = 0
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        if rederive and epoch > 1:
            config = pin(current(), EncodeConfig.from_dict({**config.to_dict(), "coding_for": {}, "layout_for": {}}))
        order = torch.randperm(len(train), generator=gen)
        losses = []
        for start in tqdm(
            range(0, len(train), batch_size), desc=f"epoch {epoch}/{epochs}", disable=not show, leave=False
        ):
            idx = order[start : start + batch_size]
            x = x_all[idx].to(device)
            where = f"epoch {epoch}, step {start // batch_size + 1}"
            out = torch.func.functional_call(model, {**buffers, **straight_through(params, config, where)}, (x,))
            if teacher is not None:
                with torch.no_grad():
                    target = torch.log_softmax(teacher(x), dim=1)
                loss = nn.functional.kl_div(
                    torch.log_softmax(out, dim=1), target, log_target=True, reduction="batchmean"
                )
            else:
                loss = nn.functional.cross_entropy(out, y_all[idx].to(device))
            reference = step(opt, schedule, loss, losses, reference, where, config.quality)
        weights = current()
        acc = _accuracy(model, spec, coded(weights, config), validation, device)
        result.history.append(Epoch(epoch, sum(losses) / len(losses), acc, time.perf_counter() - t0))
        log(
            f"epoch {epoch}: loss {result.history[-1].loss:.4f}, coded validation accuracy {acc * 100:.2f}% "
            f"({result.history[-1].seconds:.0f} s)"
        )
        if acc > best:
            best, result.state, result.config, stale = acc, weights, config, 0
        else:
            stale += 1
            if stale >= patience:
                result.stopped = (
                    f"early stop after epoch {epoch}: no better coded validation accuracy for {patience} epoch(s)"
                )
                log(result.stopped)
                break
    if best <= 1.5 / classes:
        raise FinetuneError(
            f"the coded model stays at chance ({best * 100:.1f}% on validation) at quality {config.quality}: "
            "raise the quality"
        )
    if not any(e.accuracy > result.start_accuracy for e in result.history):
        raise FinetuneError(
            f"no epoch improved the coded model's validation accuracy ({result.start_accuracy * 100:.2f}% before; "
            f"best epoch {max(e.accuracy for e in result.history) * 100:.2f}%): lower the learning rate (--lr)"
        )
    return result


def resolve_device(device: str) -> str:
    """``auto``: CUDA when present, else the CPU; any other name as given."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


@dataclass
class FinetuneRun:
    """What ``finetune_idx`` measured and wrote."""

    rows: list[Row]  # on the test split: float32, post-training, and the fine-tuned package (the file written)
    finetuned: Finetuned


def finetune_idx(
    model: str | Path,
    data_dir: str | Path,
    config: EncodeConfig,
    out: str | Path,
    *,
    epochs: int = 6,
    lr: float = 1e-3,
    batch_size: int = 128,
    patience: int = 3,
    distill: bool = False,
    rederive: bool = False,
    cosine: bool = True,
    seed: int = 0,
    device: str = "auto",
    report: str | Path | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> FinetuneRun:
    """Fine-tune a model file ``train_and_save`` wrote on the IDX files in ``data_dir`` (the
    split ``held_out`` keeps back validates), coded with ``config`` as ``pin`` fixes it, and
    write the best epoch's package to ``out`` (nothing when ``finetune`` raises). ``report``:
    also write report.json, report.md and a plot of the test rows there.

    >>> config = EncodeConfig.preset("default", **FINETUNE_DEFAULTS)
    >>> finetune_idx("models/mnist-mlp/model.safetensors", "../shared/data/mnist", config, "ft.jpw").rows[-1].setting
    'q5'
    """
    state, spec = load_model(model)
    full, test = load_mnist(data_dir, "train", labelled=not distill), load_mnist(data_dir, "test")
    if len(full) <= 2 * VAL_SIZE:
        raise FinetuneError(
            f"{data_dir} has {len(full)} training images: fine-tuning needs more than {2 * VAL_SIZE} "
            f"(the last {VAL_SIZE} validate)"
        )
    train_split, validation = held_out(full)
    pinned = pin(state, config)
    result = finetune(state, spec, train_split, validation, pinned, epochs=epochs, lr=lr, batch_size=batch_size,
                      patience=patience, distill=distill, rederive=rederive, cosine=cosine, seed=seed,
                      device=resolve_device(device), log=log)  # fmt: skip
    rows, package = _test_rows(state, spec, pinned, result, test)
    write_atomic(out, package)
    if report is not None:
        notes = [
            f"`{_command(Path(model).name, config, epochs, lr)}` (table {config.qtable}, ranges per {config.ranges}"
            f"{', cosine decay' if cosine else ''}): {len(train_split):,} training images, {VAL_SIZE:,} validation, "
            f"{len(test):,} test; bytes are whole-model files; {len(result.history)} epoch(s) run."
        ]
        write_report(rows, Path(report), f"{Path(model).parent.name}: fine-tuned through the codec", notes)
    return FinetuneRun(rows, result)


def _command(model_name: str, config: EncodeConfig, epochs: int, lr: float) -> str:
    """The ``jpegweights finetune`` command line that runs what ``finetune_idx`` ran, for the report."""
    codings = [f"--coding-for {n}={c}" for n, c in config.coding_for]
    qualities = [f"--quality-for {n}={q}" for n, q in config.quality_for]
    flags = [f"--quality {config.quality}", *codings, *qualities, f"--epochs {epochs}", f"--lr {lr:g}"]
    return f"jpegweights finetune {model_name} {' '.join(flags)}"


def _test_rows(
    state: dict[str, torch.Tensor], spec: dict[str, Any], pinned: EncodeConfig, result: Finetuned, test: Split
) -> tuple[list[Row], bytes]:
    """The float32, post-training and fine-tuned rows on ``test``; and the fine-tuned package."""
    f32 = float32_bytes(state)
    model = build(spec).eval()
    rows: list[Row] = []
    for method, weights, cfg in (
        ("float32", state, None),
        ("jpegweights (post-training)", state, pinned),
        ("jpegweights finetune", result.state, result.config),
    ):
        data = encode(weights, cfg, spec) if cfg is not None else None
        model.load_state_dict(decode(data) if data is not None else weights)
        acc = accuracy(model, spec, test)
        base = acc if not rows else rows[0].accuracy
        nbytes = len(data) if data is not None else f32
        rows.append(Row(method, "-" if cfg is None else f"q{cfg.quality}", nbytes, f32 / nbytes, acc, acc - base))
    return rows, data  # the last row's bytes: the fine-tuned package
