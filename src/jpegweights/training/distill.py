"""Fine-tuning without labels, through the model's own handler: distillation from the float model.

>>> config = pin(state, EncodeConfig(quality=90, qtable="flat", ranges="row", raw_dtype="float16"))
>>> result = distill(state, manifest, train, validation, config, epochs=60, lr=1e-5)
>>> save_file(result.state, "model-ft.jpw", result.config, manifest["architecture"], manifest["handler"])

``finetune`` reads IDX images. This takes what the model's handler takes: a folder of images
for MobileNetV2, a text file for MiniLM (``pipeline.read_inputs``). It is
straight-through like ``finetune``: each step's forward pass uses every tensor as the package
will decode it.

The loss is the distortion that ``compress --calibrate`` measures: the KL divergence from the
float model's probabilities, or 1 − the cosine of its output vectors. Validation is the same
distortion of the coded model on held-out inputs. It keeps the best epoch and stops after
``patience`` epochs without a better one.

The model trains unfused and in eval mode, even where its handler folds BatchNorm for serving:
BatchNorm keeps the float model's statistics, coded as the package codes them.

``distill_files`` is the whole job (``jpegweights finetune --data``): a model file and a file
of inputs in, the fine-tuned package out.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jpegweights import cpus
from jpegweights.codec import EncodeConfig, encode
from jpegweights.files import write_atomic
from jpegweights.handlers import Handler, Limits, Request, RequestError, build, collate, load, rows
from jpegweights.pipeline import load_state_dict, read_inputs
from jpegweights.pipeline.calibrate import MAX_SAMPLES, Calibration, chunks

from .finetune import FinetuneError, coded, pin, resolve_device, step, straight_through


@dataclass
class DistillEpoch:
    epoch: int
    loss: float  # mean training distortion of the coded model
    distortion: float  # on the validation inputs, coded
    seconds: float


@dataclass
class Distilled:
    state: dict[str, torch.Tensor]  # float weights: their coding (``config``) is the model
    config: EncodeConfig
    metric: str  # "kl" or "cosine" (the distortion is then 1 - cosine)
    start: float  # validation distortion of the coded float model
    best: float
    history: list[DistillEpoch] = field(default_factory=list)
    stopped: str = ""


class _Through(nn.Module):
    """The handler's outputs as a function of the student's weights, for ``functional_call``."""

    def __init__(self, handler: Handler, student: nn.Module) -> None:
        super().__init__()
        self.student, self.handler = student, handler

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.handler.module = self.student
        return self.handler.predict(batch)


def distortion(metric: str, target: torch.Tensor, got: torch.Tensor) -> torch.Tensor:
    """Mean KL(target || got) of probabilities, or mean 1 - cosine of vectors (differentiable)."""
    if metric == "kl":
        return (target * (target.clamp_min(1e-12).log() - got.clamp_min(1e-12).log())).sum(1).mean()
    return 1 - nn.functional.cosine_similarity(target.flatten(1), got.flatten(1), dim=1).mean()


@cpus.torch_threads()  # no more threads than the CPUs this process may use
def distill(
    state: Mapping[str, torch.Tensor],
    manifest: Mapping[str, Any],
    train: Request,
    validation: Request,
    config: EncodeConfig,
    *,
    epochs: int = 60,
    lr: float = 1e-5,
    batch_size: int = 16,
    patience: int = 10,
    cosine: bool = True,
    seed: int = 0,
    device: str = "cpu",
    trust_code: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> Distilled:
    """Fine-tune ``state`` so that its coding under ``config`` (see ``finetune.pin``) follows the
    float model's outputs on ``train``. Raises ``FinetuneError`` on inputs the handler refuses,
    a NaN loss, divergence, or no epoch better than the start; ``CalibrationError`` (a
    ``HandlerError``) on validation inputs it refuses."""
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise FinetuneError("epochs and batch size must be at least 1, the learning rate positive")
    torch.manual_seed(seed)
    handler = load(manifest, {k: v.clone() for k, v in state.items()}, device, trust_code=trust_code)
    try:
        batch = handler.decode_request(train, Limits(max_samples=MAX_SAMPLES))
    except RequestError as exc:
        raise FinetuneError(f"the training inputs do not fit the model's handler ({handler.name}): {exc}") from None
    outputs = collate([handler.run(b) for b in chunks(batch)])  # the float model's, as the targets
    metric = "kl" if "probabilities" in outputs else "cosine"
    measure = Calibration(manifest, state, validation, metric, device, trust_code=trust_code)
    target = outputs[measure.key].float()
    student = build(
        manifest["architecture"], {k: v.clone() for k, v in state.items()}, device, trust_code=trust_code
    )  # eval()
    through = _Through(handler, student)
    buffers = {
        f"student.{n}": b for n, b in coded(dict(student.named_buffers()), config).items()
    }  # fixed: they do not train
    start = measure(coded(state, config))
    result = Distilled(dict(state), config, metric, start, start)  # replaced by the first better epoch, or refused
    log(f"coded before fine-tuning: validation {metric} distortion {start:.5f}")
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    n = rows(batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * math.ceil(n / batch_size)) if cosine else None
    gen, reference, stale = torch.Generator().manual_seed(seed), None, 0
    for epoch in range(1, epochs + 1):
        t0, losses = time.perf_counter(), []
        for i, idx in enumerate(torch.randperm(n, generator=gen).split(batch_size), 1):
            weights = straight_through(dict(student.named_parameters()), config, f"epoch {epoch}, step {i}")
            out = torch.func.functional_call(
                through,
                {**buffers, **{f"student.{k}": v for k, v in weights.items()}},
                ({k: v[idx] for k, v in batch.items()},),
            )
            loss = distortion(metric, target[idx], out[measure.key].float())
            reference = step(opt, schedule, loss, losses, reference, f"epoch {epoch}, step {i}", config.quality)
        weights = {k: v.detach().cpu().clone() for k, v in student.state_dict().items()}
        value = measure(coded(weights, config))
        result.history.append(DistillEpoch(epoch, sum(losses) / len(losses), value, time.perf_counter() - t0))
        log(
            f"epoch {epoch}: training {metric} distortion {result.history[-1].loss:.5f}, "
            f"validation {value:.5f} ({result.history[-1].seconds:.0f} s)"
        )
        if value < result.best:
            result.best, result.state, stale = value, weights, 0
        else:
            stale += 1
            if stale >= patience:
                result.stopped = (
                    f"early stop after epoch {epoch}: no better validation distortion for {patience} epoch(s)"
                )
                log(result.stopped)
                break
    if result.best >= start:
        raise FinetuneError(
            f"no epoch improved the coded model on validation ({metric} distortion {start:.5f} before): "
            "lower the learning rate (--lr)"
        )
    return result


@dataclass
class DistillRun:
    """What ``distill_files`` measured and wrote."""

    distilled: Distilled
    trained: int  # inputs trained on
    held: int  # inputs held out: the validation distortions are on these
    float32_bytes: int  # the float weights at 4 bytes a value
    post_training_bytes: int  # the float weights coded as the fine-tuned package is
    package_bytes: int  # the fine-tuned package, the file written


def distill_files(
    model: str | Path,
    data: str | Path,
    config: EncodeConfig,
    out: str | Path,
    *,
    validation: float = 0.2,
    epochs: int = 60,
    lr: float = 1e-5,
    batch_size: int = 16,
    patience: int = 10,
    cosine: bool = True,
    seed: int = 0,
    device: str = "auto",
    trust_code: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> DistillRun:
    """``distill`` a model file (an architecture in its metadata, and a handler if not the
    default) on the inputs at ``data`` (``pipeline.read_inputs``: an image folder or a text file),
    the last ``validation`` fraction of them held out; coded with ``config`` as ``pin`` fixes it.
    Writes the best epoch's package to ``out`` (nothing when ``distill`` raises).

    >>> run = distill_files("model.safetensors", "photos/", EncodeConfig(quality=90), "model-ft.jpw")
    >>> run.distilled.best < run.distilled.start
    True
    """
    if not 0 < validation < 1:
        raise ValueError(f"--validation must be a fraction between 0 and 1, got {validation}")
    state, architecture, handler = load_state_dict(model)
    if architecture is None:
        raise ValueError(
            f"{model}: --data needs an architecture in its metadata, and the handler if not the default "
            "(jpegweights train and import --store write them)"
        )
    request = read_inputs(Path(data))
    kind = "images" if request.images is not None else "text"
    inputs = getattr(request, kind)
    held = max(1, round(len(inputs) * validation))
    if len(inputs) - held < 1:
        raise ValueError(
            f"{data}: {len(inputs)} input(s); fine-tuning needs at least 2 (one to train on, one to validate)"
        )
    train, val = (dataclasses.replace(request, **{kind: part}) for part in (inputs[:-held], inputs[-held:]))
    manifest = {"architecture": architecture, **({"handler": handler} if handler is not None else {})}
    result = distill(state, manifest, train, val, pin(state, config), epochs=epochs, lr=lr, batch_size=batch_size,
                     patience=patience, cosine=cosine, seed=seed, device=resolve_device(device),
                     trust_code=trust_code, log=log)  # fmt: skip
    post_training = encode(state, result.config, architecture, handler)
    package = encode(result.state, result.config, architecture, handler)
    write_atomic(out, package)
    f32 = sum(t.numel() * 4 for t in state.values())
    return DistillRun(result, len(inputs) - held, held, f32, len(post_training), len(package))
