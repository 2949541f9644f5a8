"""Calibration: how far coded weights move a model's outputs, measured through its handler on
the user's own inputs. This is the ``distortion`` that ``jpegweights.codec.allocate`` spends a
bit budget against.

>>> request = read_inputs(Path("photos/"))            # an image folder, or a text file
>>> measure = Calibration(manifest, state, request, "kl")
>>> measure({"features.0.0.weight": decoded})           # mean KL against the float model

Metrics: ``kl``, the mean KL divergence of a classifier's output distribution (handlers that
give ``probabilities``); ``cosine``, one minus the mean cosine between the float model's and the
coded model's output vectors (``embedding``, else the handler's first output).

Inputs come in kinds (the user's data is one; ``floor=True`` adds the bundled ones of
``calibration/`` for the model's kind of input: six kinds of text, three of photos), and the distortion is that
of the kind it is worst on. Error compensation fits the user's inputs only: the bundled kinds,
measured but never fitted on, stand for the inputs it will meet and the calibration never saw.
"""

from __future__ import annotations

import io
import math
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from jpegweights import cpus
from jpegweights.handlers import load
from jpegweights.handlers.base import Batch, Limits, Request, Signature, collate, rows, split
from jpegweights.handlers.errors import CalibrationError, RequestError, show

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"})
MAX_SAMPLES = 1024
MAX_FILE_BYTES = 64 << 20
MAX_TOTAL_BYTES = 1 << 30
METRICS = ("kl", "cosine")
CHUNK = 32  # rows per forward pass
BUNDLED = Path(__file__).parent / "calibration"  # text/<kind>.txt, images/<kind>/*.jpg
DEFAULT = "default"  # as calibration data: the bundled kinds alone
SOURCES = ("text", "images")  # the handler input sources that have bundled kinds


def read_inputs(path: Path, max_samples: int = MAX_SAMPLES) -> Request:
    """A folder's image files (by name, at most ``max_samples``), or a UTF-8 text file's
    non-empty lines, as one request."""
    path = Path(path)
    try:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())[
                :max_samples
            ]
            if not files:
                raise CalibrationError(f"{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) to calibrate on")
            if sum(p.stat().st_size for p in files) > MAX_TOTAL_BYTES:
                raise CalibrationError(
                    f"{path}: the first {len(files)} images hold over {MAX_TOTAL_BYTES >> 30} GiB; "
                    "calibrate on fewer or smaller files"
                )
            return Request(images=[_read(p) for p in files])
        if path.is_file():
            try:
                text = _read(path).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CalibrationError(
                    f"{path}: not a UTF-8 text file (one input per line) nor an image folder: {exc}"
                ) from None
            lines = [line.strip() for line in text.splitlines() if line.strip()][:max_samples]
            if not lines:
                raise CalibrationError(f"{path}: no non-empty lines to calibrate on")
            return Request(text=lines)
    except OSError as exc:
        raise CalibrationError(f"{path}: cannot read the calibration data: {exc.strerror or exc}") from None
    raise CalibrationError(f"{path}: no such folder or file")


def bundled(source: str) -> dict[str, Request]:
    """The bundled calibration inputs for a model whose input is ``source``, one request per
    kind: ``text``, a file of lines per kind; ``images``, a folder of photos per kind, each
    photo seen in its ``views``. None for other inputs."""
    if source not in SOURCES:
        return {}
    folder = BUNDLED / source
    if source == "text":
        return {p.stem: read_inputs(p) for p in sorted(folder.glob("*.txt"))}
    return {
        p.name: Request(images=[v for photo in read_inputs(p).images for v in views(photo)])
        for p in sorted(folder.iterdir())
        if p.is_dir()
    }


def colour_images(signature: Signature) -> bool:
    """Whether a model's images are colour photos, its array input ``(N, 3, H, W)``: the bundled
    photos are a floor for those models only."""
    return any(spec.source == "inputs" and len(spec.shape) == 4 and spec.shape[1] == 3 for spec in signature.inputs)


def views(photo: bytes) -> list[bytes]:
    """An image, mirrored, and each centre-cropped to 80% and 60% of its sides, as PNGs (6
    views): a few photos stand for more of the framings a classifier meets."""
    from PIL import Image, ImageOps

    img = Image.open(io.BytesIO(photo)).convert("RGB")
    out = []
    for im in (img, ImageOps.mirror(img)):
        for keep in (1.0, 0.8, 0.6):
            w, h = im.size
            box = (int(w * (1 - keep) / 2), int(h * (1 - keep) / 2), int(w * (1 + keep) / 2), int(h * (1 + keep) / 2))
            buf = io.BytesIO()
            im.crop(box).save(buf, "PNG")
            out.append(buf.getvalue())
    return out


def combined(kinds: Mapping[str, Request], measured: Sequence[str] = ()) -> tuple[Request, list[str], int, int]:
    """One request of every kind's inputs, each input's kind, where its first half ends and
    where the kinds in ``measured`` begin: the first halves of the other kinds, then their
    second halves (error compensation fits on the first and measures on the second), then the
    kinds that are only ever measured on, each part's kinds taken in turn."""
    fields = {next((f for f in ("text", "images", "inputs", "pairs") if getattr(r, f) is not None), None)
              for r in kinds.values()}  # fmt: skip
    if len(kinds) == 1 and None not in fields and not measured:  # one kind (raw arrays too), as it is
        (name, request), field = next(iter(kinds.items())), fields.pop()
        n = len(getattr(request, field))
        return request, [name] * n, n // 2, n
    if fields not in ({"text"}, {"images"}):
        raise CalibrationError("calibration inputs of several kinds must all be texts or all be images")
    field = fields.pop()
    items = {name: list(getattr(r, field)) for name, r in kinds.items()}
    own = {k: v for k, v in items.items() if k not in measured}
    parts = [
        {k: v[: len(v) // 2] for k, v in own.items()},
        {k: v[len(v) // 2 :] for k, v in own.items()},
        {k: v for k, v in items.items() if k in measured},
    ]
    out, labels = [], []
    for part in parts:
        for i in range(max(map(len, part.values()), default=0)):
            for name, queue in part.items():
                if i < len(queue):
                    out.append(queue[i])
                    labels.append(name)
    fit = sum(map(len, parts[0].values()))
    return Request(**{field: out}), labels, fit, fit + sum(map(len, parts[1].values()))


def _read(path: Path) -> bytes:
    if path.stat().st_size > MAX_FILE_BYTES:
        raise CalibrationError(f"{path}: over {MAX_FILE_BYTES >> 20} MiB")
    return path.read_bytes()


def chunks(batch: Batch) -> list[Batch]:
    """A batch in pieces of ``CHUNK`` rows, one forward pass each, so that memory stays bounded
    however many inputs there are."""
    n = rows(batch)
    return split(batch, [min(CHUNK, n - i) for i in range(0, n, CHUNK)])


def kl_rows(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of each row of probabilities, in float64."""
    p, q = p.double(), q.double().clamp_min(1e-12)
    return (p * (p.clamp_min(1e-12).log() - q.log())).sum(1)


def mean_kl(p: torch.Tensor, q: torch.Tensor) -> float:
    """Mean KL(p || q) over rows of probabilities, in float64."""
    return float(kl_rows(p, q).mean())


class Calibration:
    """``distortion(replaced)``: how far the outputs on ``request`` move when the tensors in
    ``replaced`` take those values (every other tensor keeps its value in ``state``).

    Made without a ``metric`` (and with ``compensate``) it measures nothing and gives
    ``hessians()`` of every input, the same to the bit as a search's ``hessians(every_input=True)``.

    With ``compensate``, the inputs are cut in two, in order: ``hessians()`` come from the
    first half and distortions are measured on the second. Error compensation fits the inputs
    it is given, so measured on those same inputs it looks far better than it does on others
    (MobileNetV2 calibrated to KL 0.014 on its 42 inputs gave 0.106 on others). The package
    is then coded with ``hessians(every_input=True)``, which carries to other inputs better
    still (docs/codec.md)."""

    def __init__(
        self,
        manifest: Mapping[str, Any],
        state: Mapping[str, torch.Tensor],
        request: Request | Mapping[str, Request],
        metric: str | None,
        device: str = "cpu",
        *,
        trust_code: bool = False,
        compensate: bool = False,
        floor: bool = False,
    ):
        """``request``: the inputs, or inputs of several kinds by name; ``floor``: with the
        bundled kinds for the model's input (text, or colour photos) measured on too, never
        fitted on: error compensation fits the user's inputs alone, so that the bundled kinds
        stand for inputs it never saw."""
        if metric is not None and metric not in METRICS:
            raise CalibrationError(f"metric must be one of {METRICS}, got {show(metric)}")
        self.state, self.metric, self.trust_code = dict(state), metric, trust_code
        self._pool: ThreadPoolExecutor | None = None  # the forward passes' threads (``_outputs``)
        # The module may hold the very tensors it is given: a measurement swaps what its
        # parameters point at, never writes into them (a copy would double a large model).
        self.handler = load(manifest, self.state, device, trust_code=trust_code)
        kinds = dict(request) if isinstance(request, Mapping) else {"inputs": request}
        extra: dict[str, Request] = {}
        if floor:
            sources = {spec.source for spec in self.handler.signature.inputs}
            if not colour_images(self.handler.signature):  # a digit classifier's inputs are nothing like photos
                sources.discard("images")
            extra = {name: r for source in sorted(sources) for name, r in bundled(source).items() if name not in kinds}
        if not kinds:  # none given: the bundled kinds are the inputs, fitted on too
            kinds, extra = extra, {}
        if not kinds:
            raise CalibrationError(f"no calibration inputs: none given, and none bundled for {self.handler.name}")
        self.kinds = [*kinds, *extra]
        self.request, labels, fit, own = combined({**kinds, **extra}, measured=list(extra))
        self.own = own  # the given inputs (fitted on), before the bundled kinds
        request = self.request
        try:
            batch = self.handler.decode_request(request, Limits(max_samples=MAX_SAMPLES))
        except RequestError as exc:
            raise CalibrationError(
                f"the calibration data does not fit the model's handler ({self.handler.name}): {exc}"
            ) from None
        self.samples = rows(batch)
        if compensate and metric is None:  # second moments only: every input is fitted on, each half apart
            # as a search's hessians(every_input=True) runs them, so that both give the same bits: a
            # forward pass's float32 sums depend on its batch's size (MiniLM's 8 rows against 20, 2 threads)
            halves = split(batch, [fit, own - fit, self.samples - own])[:2]
            self.fit_batches, batch, labels = [c for half in halves for c in chunks(half)], None, []
        elif compensate:
            if self.samples < 2:
                raise CalibrationError(
                    "error compensation needs at least 2 calibration inputs, one half to fit and the other "
                    "to measure on: give more, or --no-compensate"
                )
            first, second, floor_rows = split(batch, [fit, own - fit, self.samples - own])
            self.fit_batches, labels = chunks(first), labels[fit:]
            self.own_batches, batch = chunks(second), floor_rows
        else:
            self.fit_batches = None
        self.own_batches: list[Batch] = getattr(self, "own_batches", [])  # the user's inputs measured on
        self.batches = self.own_batches + ([] if batch is None else chunks(batch))
        self.labels = labels  # the kind of each input measured on
        outputs = self._outputs() if metric is not None else {}
        self.key = None
        if metric == "kl":
            if "probabilities" not in outputs:
                raise CalibrationError(
                    "a KL target needs a handler that gives probabilities; "
                    f"{self.handler.name} gives {sorted(outputs)}: use a cosine target"
                )
            self.key = "probabilities"
        elif metric == "cosine":
            floats = [k for k, v in outputs.items() if v.is_floating_point() and v.dim() >= 2]
            if not floats:
                raise CalibrationError(
                    f"a cosine target needs an output of vectors; {self.handler.name} gives {sorted(outputs)}"
                )
            self.key = "embedding" if "embedding" in floats else floats[0]
        if self.key is not None:
            self.reference = outputs[self.key].double()
        live = self.handler.module.state_dict(keep_vars=True)
        # Swapping values into the module is much faster than rebuilding (a transformer's build
        # takes longer than its forward pass), and right when the module holds every tensor as
        # it is: not when setup folded BatchNorm into the convolutions.
        same = all(
            k in live and live[k].shape == v.shape and torch.equal(live[k].detach().cpu(), v)
            for k, v in self.state.items()
        )
        self.live = live if same else None

    def _outputs(self) -> Batch:
        """Every batch's outputs. With torch on one thread (a search: ``cpus.torch_threads(1)``),
        a pass per CPU at once, as the server runs them; else one pass at a time, on torch's threads."""
        workers = cpus.available() if torch.get_num_threads() == 1 else 1
        if workers < 2 or len(self.batches) < 2:
            return collate([self.handler.run(b) for b in self.batches])
        if self._pool is None:
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="calibration")
            weakref.finalize(self, self._pool.shutdown, wait=False)
        return collate(list(self._pool.map(self.handler.run, self.batches)))

    def hessians(self, every_input: bool = False, lookups: bool = True) -> dict[str, torch.Tensor]:
        """For each weight of the state that a Linear or an ungrouped Conv2d multiplies its
        input by: the second moment ``Σ xᵀx`` (float32; layers fed the same input, such as
        attention's q, k and v, share one tensor) of those inputs over the first half of
        the calibration inputs (all of them with ``every_input``; never the bundled kinds of a
        floor, which stand for inputs not fitted on), in the float model (a
        convolution's unfolded as its weight is flattened; a Linear layer's without the
        positions the handler says are padding, ``Handler.positions``). For the lookup tables the handler
        names (``Handler.lookups``: a text model's token embeddings), unless ``lookups`` is
        false, a ``(rows,)`` weight of how often each row is looked up in the same inputs, and
        expected to be. The codec takes them (``encode(..., hessians=)``): error compensation
        for the first, coarser steps for the rows used least for the second."""
        if self.fit_batches is None:
            raise CalibrationError("hessians need a Calibration made with compensate=True")
        if self.live is None:  # the module may hold the last measurement's values
            self.handler.rebuild(self.state, trust_code=self.trust_code)
        sums: dict[str, torch.Tensor] = {}
        real: list[torch.Tensor | None] = [None]  # the batch being run: its positions that are not padding
        seen: dict[int, tuple] = {}  # the batch's inputs so far: id -> (input, width, key)
        hooks = []
        for prefix, module in self.handler.module.named_modules():
            key = f"{prefix}.weight" if prefix else "weight"
            width = _input_width(module)
            if (
                width is None
                or key not in self.state
                or self.state[key].dim() < 2
                or self.state[key][0].numel() != width
            ):
                continue

            def hook(module: torch.nn.Module, args: tuple, output: Any, key: str = key) -> None:
                x = args[0]
                twin = seen.get(id(x))
                if twin is not None and twin[0] is x and twin[1] == _input_width(module):
                    sums[key] = sums[twin[2]]  # the same input as a sibling's (q, k and v): one sum for both
                    return
                seen[id(x)] = (x, _input_width(module), key)
                if isinstance(module, torch.nn.Linear) and real[0] is not None and x.shape[:-1] == real[0].shape:
                    x = x[real[0].to(x.device)]  # (tokens, features): padding feeds no output
                x = _unfolded(module, x).float()
                sums[key] = sums[key].addmm(x.T, x) if key in sums else x.T @ x  # a new sum: a twin's stays

            hooks.append(module.register_forward_hook(hook))
        batches = self.fit_batches + (self.own_batches if every_input else [])
        try:
            for b in batches:
                real[0] = self.handler.positions(b)
                seen.clear()
                self.handler.run(b)
        finally:
            for h in hooks:
                h.remove()
        for key, weights in self.handler.lookups(batches).items() if lookups else ():
            if key in self.state and self.state[key].dim() == 2 and len(weights) == len(self.state[key]):
                sums[key] = weights
        return sums

    def __call__(self, replaced: Mapping[str, torch.Tensor]) -> float:
        """The distortion on the kind of input it is largest on."""
        return max(self.by_kind(replaced).values())

    def by_kind(self, replaced: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """The distortion on each kind of input (of those measured on: with error compensation,
        the second half of each), as ``__call__`` measures it."""
        per_row = self._per_row(replaced)
        out = {}
        for kind in self.kinds:
            mask = torch.tensor([label == kind for label in self.labels])
            if bool(mask.any()):
                value = float(per_row[mask].mean())
                out[kind] = value if math.isfinite(value) else math.inf  # NaN outputs: as far off as can be
        return out

    def _per_row(self, replaced: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.key is None:
            raise CalibrationError("a Calibration made without a metric measures nothing (it gives hessians())")
        if self.live is None:
            self.handler.rebuild({**self.state, **replaced}, trust_code=self.trust_code)
            got = self._outputs()[self.key].double()
        else:
            held = {name: self.live[name].data for name in replaced}
            try:
                for name, value in replaced.items():
                    self.live[name].data = value.to(held[name].device, held[name].dtype)
                got = self._outputs()[self.key].double()
            finally:
                for name, value in held.items():
                    self.live[name].data = value
        if self.metric == "kl":
            return kl_rows(self.reference, got)
        return 1 - torch.nn.functional.cosine_similarity(self.reference.flatten(1), got.flatten(1), dim=1)


def _input_width(module: torch.nn.Module) -> int | None:
    """How many input values each output of ``module`` reads (its weight's row length), for the
    layers whose inputs ``_unfolded`` can lay out; None for any other."""
    if isinstance(module, torch.nn.Linear):
        return module.in_features
    if (
        isinstance(module, torch.nn.Conv2d)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    ):
        return module.in_channels * module.kernel_size[0] * module.kernel_size[1]
    return None


def _unfolded(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The inputs ``module`` multiplies its weight's rows by, one per row: (n, row length)."""
    if isinstance(module, torch.nn.Linear):
        return x.reshape(-1, module.in_features)
    cols = torch.nn.functional.unfold(
        x, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride
    )
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])
