"""Codings measured beside error compensation and not built: each is a change to how a matrix
is coded, measured as compare.py measures (held-out views or sentences; calibration inputs as
benchmarks/compensation.py takes them). About 13 minutes on 2 cores.

    .venv/bin/python benchmarks/untaken.py [--only columns rows act-order entropy sequential embedding grid]

Prints one JSON line per row:

- ``columns`` (MiniLM, three matrices): columns scaled by ``s_j ∝ H_jj^α`` before coding and
  divided out after (AWQ's scaling, here with compensation on the scaled H); bytes and the
  output error ``tr(E H Eᵀ) / tr(W H Wᵀ)`` in dB, H from the held-out sentences.
- ``rows``: each row's step set by its output sensitivity ``F_i`` (the Fisher information of
  the output, or of the embedding's tangent for a cosine, at the layer's output channel i, 8
  random probes per input) instead of by its range: ``step_i = max(range_i / 255, κ /
  sqrt(F_i + floor·mean F))``, ``κ`` the ``p`` quantile of ``range_i·sqrt(F_i)/255`` over rows
  (p = 1: every row steps by its sensitivity, the finest at its full range; p = 0.5: only the
  less sensitive half coarser). Uniform qualities, compensated, whole models.
- ``act-order``: strips coded in decreasing order of their share of H's diagonal (GPTQ's
  act-order, by strips of 8 columns, which leaves the file's layout alone).
- ``entropy``: MiniLM at q80, compensated: each JPEG's bytes against the zeroth-order entropy of
  its quantized coefficients (per frequency), the most any entropy coder without context could
  save; and the same JPEGs transcoded losslessly to JPEG's own adaptive arithmetic coding (ITU
  T.81 Annex D; libjpeg-turbo 2.1 through jpeglib), checked to decode to the same pixels.
- ``sequential``: each matrix in the order the model runs them, its H from the inputs the matrices
  already coded give (GPTQ's own order), and also with its target moved so that it answers those
  inputs as the float matrix answers the float ones (``W + W (C − H_q)(H_q + λI)⁻¹``, ``C =
  Σ x_float x_codedᵀ``, GPTAQ's asymmetric calibration), λ as for compensation.
- ``embedding``: MiniLM's word embeddings with columns scaled by the output's sensitivity to
  each dimension (``s_j ∝ F_j^α``), alone in the float model.
- ``grid``: the calibrated search (as compare.py runs it, at compare.py's first compensated
  target) choosing from the default qualities, and from one quality for each distinct step of
  the flat table from 98 to 20 (36 of them); and where each package's bytes go, by coding (the
  rest is the file's header).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from compare import PRETRAINED, Fidelity, shown  # noqa: E402
from compensation import calibration_inputs  # noqa: E402
from pretrained_fidelity import SENTENCES  # noqa: E402

from jpegweights.codec import EncodeConfig, compensate, decode, encode, tiles  # noqa: E402
from jpegweights.codec import core as codec_core  # noqa: E402
from jpegweights.handlers import Request  # noqa: E402
from jpegweights.handlers.calibrate import Calibration, read_inputs  # noqa: E402
from jpegweights.handlers.importers import read_state  # noqa: E402

SECTIONS = ("columns", "rows", "act-order", "entropy", "embedding", "sequential", "grid")
MINILM, MOBILENET = "all-minilm-l6-v2", "mobilenet_v2"
WORD = "embeddings.word_embeddings.weight"


def emit(**row) -> None:
    print(json.dumps(row, ensure_ascii=False), flush=True)


class Model:
    def __init__(self, model: str):
        self.name = model
        self.state, metadata = read_state(ROOT / "models" / model / "model.safetensors")
        self.manifest = {k: json.loads(metadata[k]) for k in ("architecture", "handler") if k in metadata}
        self.fidelity = Fidelity(model, self.state, self.manifest)
        with tempfile.TemporaryDirectory() as tmp:
            self.request = read_inputs(calibration_inputs(model, Path(tmp)))
        self.calibration = Calibration(self.manifest, self.state, self.request, None, compensate=True)
        self.hessians = self.calibration.hessians(every_input=True, lookups=False)  # compensation alone, as measured before rows by use

    def package(self, quality: int) -> bytes:
        return encode(self.state, EncodeConfig(**PRETRAINED).at_quality(quality), self.manifest.get("architecture"), self.manifest.get("handler"), hessians=self.hessians)

    def held_out(self, data: bytes) -> str:
        return shown(self.fidelity(decode(data)))

    def gradients(self, layers: dict[str, tuple[torch.nn.Module, int]], probes: int = 8) -> dict[str, torch.Tensor]:
        """For each ``key: (module, dim)``: the squared gradient reaching the module's output,
        summed over all but ``dim``, of a random output direction (KL: the log-probability of a
        label drawn from the model; cosine: a Gaussian direction orthogonal to the embedding),
        over ``probes`` draws per calibration input (the first half)."""
        handler, sums, hooks = self.calibration.handler, {}, []
        for key, (layer, dim) in layers.items():

            def hook(layer, args, out, key=key, dim=dim):
                def grad(g):
                    sums[key] = sums.get(key, 0) + (g.double() ** 2).movedim(dim, -1).reshape(-1, g.shape[dim]).sum(0)

                out.register_hook(grad)

            hooks.append(layer.register_forward_hook(hook))
        generator = torch.Generator().manual_seed(0)
        handler.module.requires_grad_(True)
        try:
            for batch in self.calibration.fit_batches:
                for _ in range(probes):
                    with torch.enable_grad():
                        out = handler.predict(batch)
                        if "probabilities" in out:
                            p = out["probabilities"]
                            loss = p.gather(1, torch.multinomial(p.detach(), 1, generator=generator)).clamp_min(1e-30).log().sum()
                        else:
                            e = out["embedding"]
                            r = torch.randn(e.shape, generator=generator)
                            loss = ((r - (r * e.detach()).sum(1, keepdim=True) * e.detach()) * e).sum()
                        loss.backward()
        finally:
            for h in hooks:
                h.remove()
            handler.module.requires_grad_(False)
        return sums

    def sensitivities(self) -> dict[str, torch.Tensor]:
        """Per output channel of each Linear and Conv2d, for its stored (unfolded) weight's rows."""
        module = self.calibration.handler.module
        layers = {f"{k}.weight": (v, 1 if isinstance(v, torch.nn.Conv2d) else -1) for k, v in module.named_modules() if isinstance(v, (torch.nn.Linear, torch.nn.Conv2d)) and f"{k}.weight" in self.state}
        live = module.state_dict()  # BatchNorm folded in: a row's gradient reaches the stored row scaled
        out = {}
        for key, f in self.gradients(layers).items():
            stored, folded = (t.reshape(t.shape[0], -1).double() for t in (self.state[key], live[key]))
            out[key] = f * (folded.norm(dim=1) / stored.norm(dim=1).clamp_min(1e-30)) ** 2
        return out


@contextmanager
def patched(owner, name: str, replacement) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, original)


def columns(m: Model) -> None:
    held_out = Calibration(m.manifest, m.state, Request(text=SENTENCES), None, compensate=True).hessians(every_input=True)
    for name in ("encoder.layer.0.intermediate.dense.weight", "encoder.layer.0.output.dense.weight", "encoder.layer.3.attention.self.query.weight"):
        w, h, hh = m.state[name].double(), m.hessians[name], held_out[name]
        diag = torch.diagonal(h) + compensate.DAMP * torch.diagonal(h).mean()
        for alpha in (0, 0.25, 0.5):
            s = diag**alpha
            s = s / s.log().mean().exp()
            u = compensate.factor(h / (s[:, None] * s[None, :]), w.shape[1])
            points = []
            for q in (60, 70, 80, 90):
                coded = codec_core.choose(name, (w * s).float(), EncodeConfig(**PRETRAINED).at_quality(q), u)
                e = coded.decode().double() / s - w
                points.append([coded.nbytes, round(10 * math.log10(float(torch.trace(e @ hh @ e.T) / torch.trace(w @ hh @ w.T))), 2)])
            emit(section="columns", model=m.name, tensor=name, alpha=alpha, bytes_and_db=points)


def rows(m: Model, qualities: tuple[int, ...], plain: tuple[int, ...] = ()) -> None:
    """Every variant at ``qualities``; the plain coding alone at ``plain`` as well, to compare at
    equal bytes."""
    sensitivity = m.sensitivities()
    predicted = {}  # high-rate theory: dB gained by steps ∝ F^(-1/2) over steps ∝ range, equal bytes
    for key, f in sensitivity.items():
        w = m.state[key].reshape(m.state[key].shape[0], -1).double()
        if w.numel() >= 16384:
            v = (f * (w.amax(1) - w.amin(1)) ** 2).clamp_min(1e-30)
            predicted[key] = round(10 * math.log10(float(v.mean() / v.log().mean().exp())), 2)
    ranked = sorted(predicted, key=predicted.get)
    emit(section="rows", model=m.name, predicted_db={"least": {ranked[0]: predicted[ranked[0]]}, "median": predicted[ranked[len(ranked) // 2]], "most": {k: predicted[k] for k in ranked[-2:]}})
    current = {"name": None, "variant": None}
    quantize, encode_jpeg = tiles.quantize_rows, codec_core.encode_jpeg

    def by_sensitivity(x, clip_sigma=None, ranges="row", scale_dtype="auto", weights=None):
        coded = quantize(x, clip_sigma, ranges, scale_dtype, weights)
        if current["variant"] is None or current["name"] not in sensitivity:
            return coded
        p, floor = current["variant"]
        f = sensitivity[current["name"]]
        f = f + floor * f.mean()
        x = x.double()
        lo, hi = x.amin(1), x.amax(1)
        step = torch.maximum((hi - lo) / 255, torch.quantile((hi - lo) / 255 * f.sqrt(), p) / f.sqrt())
        scale = step.to(coded.scale.dtype)
        offset = (lo - (255 - (hi - lo) / scale.double()) / 2 * scale.double()).to(coded.scale.dtype)  # centred
        q = ((x - offset.double()[:, None]) / scale.double()[:, None]).round_().clamp_(0, 255).to(torch.uint8)
        return tiles.RowAffine(q, scale, offset)

    def named(name, *args, **kwargs):
        current["name"] = name
        try:
            return encode_jpeg(name, *args, **kwargs)
        finally:
            current["name"] = None

    with patched(codec_core, "quantize_rows", by_sensitivity), patched(codec_core, "encode_jpeg", named):
        for q in qualities + plain:
            for variant in (None, (0.5, 0.1), (1.0, 0.1), (1.0, 1.0)) if q in qualities else (None,):
                current["variant"] = variant
                data = m.package(q)
                emit(section="rows", model=m.name, quality=q, p_floor=variant, bytes=len(data), held_out=m.held_out(data))


def act_order(m: Model, qualities: tuple[int, ...]) -> None:
    factor, compensated = compensate.factor, compensate.compensated

    def ordered_factor(h, cols, damp=None):
        if cols % compensate.STRIP:
            return factor(h, cols, damp)
        order = torch.argsort(torch.diagonal(h).reshape(-1, compensate.STRIP).sum(1), descending=True)
        perm = (order[:, None] * compensate.STRIP + torch.arange(compensate.STRIP)).reshape(-1)
        return factor(h[perm][:, perm], cols, damp), perm

    def ordered(matrix, affine, u, table):
        if not isinstance(u, tuple):  # a matrix whose columns are not whole strips
            return compensated(matrix, affine, u, table)
        u, perm = u
        image = np.empty(tuple(matrix.shape), dtype=np.uint8)
        image[:, perm.numpy()] = compensated(matrix[:, perm], affine, u, table)
        return image

    for q in qualities:
        emit(section="act-order", model=m.name, quality=q, order="left to right", bytes=len(data := m.package(q)), held_out=m.held_out(data))
        with patched(compensate, "factor", ordered_factor), patched(compensate, "compensated", ordered):
            data = m.package(q)
        emit(section="act-order", model=m.name, quality=q, order="strips by H's diagonal", bytes=len(data), held_out=m.held_out(data))


def entropy(m: Model) -> None:
    from jpegweights.codec import container
    from jpegweights.codec.coefficients import read_coefficients

    stored, manifest = container.read(m.package(80))
    groups: dict[str, list[float]] = {}
    for name, entry in manifest["tensors"].items():
        if entry.get("coding") != "jpeg":
            continue
        group = "word embeddings" if name == WORD else "other matrices"
        for atlas in entry["atlases"]:
            k = read_coefficients(stored[atlas["key"]], atlas["height"], atlas["width"])[0].reshape(-1, 64)
            bits = 0.0
            for j in range(64):
                counts = np.unique(k[:, j], return_counts=True)[1]
                bits -= float((counts * np.log2(counts / counts.sum())).sum())
            total = groups.setdefault(group, [0, 0.0, 0])
            total[0] += stored[atlas["key"]].numel()
            total[1] += bits / 8
            total[2] += arithmetic_bytes(stored[atlas["key"]].numpy().tobytes())
    for group, (nbytes, ideal, arithmetic) in groups.items():
        emit(section="entropy", model=m.name, tensors=group, jpeg_bytes=nbytes, zeroth_order_bytes=round(ideal), ratio=round(nbytes / ideal, 3), arithmetic_coded_bytes=arithmetic, arithmetic_ratio=round(arithmetic / nbytes, 4))


def arithmetic_bytes(data: bytes) -> int:
    """The size of a baseline JPEG's coefficients written again with arithmetic coding; asserts
    that simplejpeg (the CPU decoder) reads the same pixels from both."""
    import jpeglib
    import simplejpeg

    from jpegweights.codec.coefficients import _stream_path

    with tempfile.TemporaryDirectory() as tmp, _stream_path(data) as huffman:
        arithmetic = Path(tmp, "arithmetic.jpg")
        with jpeglib.version("turbo210"):
            jpeglib.read_dct(huffman).write_dct(str(arithmetic), flags=["+ARITH_CODE"])
        coded = arithmetic.read_bytes()
    assert np.array_equal(simplejpeg.decode_jpeg(data, colorspace="GRAY"), simplejpeg.decode_jpeg(coded, colorspace="GRAY"))
    return len(coded)


def embedding(m: Model) -> None:
    layer = dict(m.calibration.handler.module.named_modules())["embeddings.word_embeddings"]
    f = m.gradients({WORD: (layer, -1)})[WORD]
    emit(section="embedding", model=m.name, sensitivity_am_over_gm=round(float(f.mean() / f.log().mean().exp()), 3))
    w = m.state[WORD].double()
    for q in (60, 50):
        for alpha in (0, 0.25, 0.5):
            s = (f / f.log().mean().exp()) ** alpha
            coded = codec_core.choose(WORD, (w * s).float(), EncodeConfig(**PRETRAINED).at_quality(q))
            got = m.fidelity({**m.state, WORD: (coded.decode().double() / s).float()})
            emit(section="embedding", model=m.name, quality=q, alpha=alpha, bytes=coded.nbytes, held_out=shown(got))


def sequential(m: Model, quality: int) -> None:
    from jpegweights.handlers.calibrate import _unfolded

    config = EncodeConfig(**PRETRAINED).at_quality(quality)
    data = m.package(quality)
    emit(section="sequential", model=m.name, quality=quality, fitted="float inputs (as built)", bytes=len(data), held_out=m.held_out(data))
    float_model = m.calibration

    def inputs(calibration: Calibration, key: str) -> torch.Tensor:
        if calibration is not float_model and calibration.live is None:  # BatchNorm folded: built again from its state
            calibration.handler.rebuild(calibration.state)
        layer = dict(calibration.handler.module.named_modules())[key.removesuffix(".weight")]
        xs: list[torch.Tensor] = []
        hook = layer.register_forward_hook(lambda mod, args, out: xs.append(_unfolded(mod, args[0]).double()))
        try:
            for batch in calibration.fit_batches:
                calibration.handler.run(batch)
        finally:
            hook.remove()
        return torch.cat(xs)

    order: list[str] = []  # the matrices in the order a forward pass runs them
    hooks = [layer.register_forward_hook(lambda mod, args, out, key=f"{prefix}.weight": order.append(key) if key in m.hessians and key not in order else None) for prefix, layer in float_model.handler.module.named_modules()]
    try:
        float_model.handler.run(float_model.fit_batches[0])
    finally:
        for h in hooks:
            h.remove()
    for asymmetric in (False, True):
        coded_model = Calibration(m.manifest, m.state, m.request, None, compensate=True)
        targets, fitted = dict(m.state), {}
        for key in order:
            xq = inputs(coded_model, key)
            fitted[key] = hq = xq.T @ xq
            if asymmetric:
                w = m.state[key].reshape(m.state[key].shape[0], -1).double()
                damped = hq + compensate.DAMP * torch.diagonal(hq).mean() * torch.eye(len(hq), dtype=hq.dtype)
                targets[key] = (w + w @ (inputs(float_model, key).T @ xq - hq) @ torch.linalg.inv(damped)).reshape(m.state[key].shape).float()
            value = codec_core.choose(key, targets[key], config, compensate.factor(hq, len(hq))).decode()
            if coded_model.live is not None:
                with torch.no_grad():
                    coded_model.live[key].copy_(value)
            else:
                coded_model.state[key] = value
        data = encode(targets, config, m.manifest.get("architecture"), m.manifest.get("handler"), hessians=fitted)
        label = "coded inputs, target moved (asymmetric)" if asymmetric else "coded inputs"
        emit(section="sequential", model=m.name, quality=quality, fitted=label, bytes=len(data), held_out=m.held_out(data))


def grid(m: Model) -> None:
    from compare import CALIBRATED

    from jpegweights.codec import summarize
    from jpegweights.codec.allocate import QUALITIES, allocate
    from jpegweights.codec.jpeg import qtable

    metric, targets = CALIBRATED[m.name]
    limit = targets[0] if metric == "kl" else 1 - targets[0]
    every_step = tuple(sorted({tuple(qtable("flat", q)): q for q in range(20, 99)}.values(), reverse=True))
    measure = Calibration(m.manifest, m.state, m.request, metric, compensate=True)
    fitted, every = measure.hessians(), measure.hessians(every_input=True)
    cache: dict = {}  # curve points of the qualities both grids hold are measured once
    for label, qualities in (("default", QUALITIES), ("every step", every_step)):
        found = allocate(m.state, EncodeConfig(**PRETRAINED), measure, limit, qualities, hessians=fitted, cache=cache)
        data = encode(m.state, found.config, m.manifest.get("architecture"), m.manifest.get("handler"), hessians=every)
        by_coding: dict[str, int] = {}
        for row in summarize(data)["tensors"]:
            by_coding[row["coding"]] = by_coding.get(row["coding"], 0) + row["bytes"]
        emit(section="grid", model=m.name, target=targets[0], qualities=label, count=len(qualities), bytes=len(data), by_coding=by_coding, measured=round(found.distortion, 6), held_out=m.held_out(data))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    args = p.parse_args()
    minilm = Model(MINILM)
    if "columns" in args.only:
        columns(minilm)
    if "entropy" in args.only:
        entropy(minilm)
    if "embedding" in args.only:
        embedding(minilm)
    if "rows" in args.only:
        rows(minilm, (90, 85, 80))
    if "act-order" in args.only:
        act_order(minilm, (85, 80))
    if "sequential" in args.only:
        sequential(minilm, 80)
    if "grid" in args.only:
        grid(minilm)
    if {"rows", "act-order", "sequential", "grid"} & set(args.only):
        mobilenet = Model(MOBILENET)
        if "rows" in args.only:
            rows(mobilenet, (90, 85), plain=(80, 75, 70))
        if "act-order" in args.only:
            act_order(mobilenet, (90, 85))
        if "sequential" in args.only:
            sequential(mobilenet, 85)
        if "grid" in args.only:
            grid(mobilenet)


if __name__ == "__main__":
    main()
