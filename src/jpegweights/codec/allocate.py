"""Per-tensor qualities chosen by measured sensitivity: a bit budget spent where it matters.

>>> found = allocate(state, EncodeConfig(qtable="flat", ranges="row"), distortion, limit=0.02)
>>> data = encode(state, found.config)     # ``found.config.quality_for`` holds the choice

The codec knows no model. The caller's ``distortion(replaced)`` says how far the model's outputs
move from the float model's (0: not at all) when the tensors in ``replaced`` take those values
and every other tensor keeps its float value: a mean KL divergence, ``1 - cosine``, a loss in
accuracy. ``allocate`` then

1. codes every tensor as ``config`` says at the highest of ``qualities``: if even that package
   misses ``limit``, it raises ``TargetError`` with the distortion it reached;
2. estimates the curve of each tensor that the config lets be JPEG-coded (int8 at a quality
   where that dominates the JPEG), alone: its bytes and the distortion at each quality, from
   the highest down, stopping at the first that passes ``limit`` on its own. Its distortion is
   measured once, at the middle quality (``probe``), and scaled to the others by the tensor's
   own output error, ``Σ_rows e H eᵀ`` with ``H`` its inputs' second moment (``hessians``; a
   lookup table's row weights, else ``H = I``): distortions grow as the square of a small
   output error (HAWQ's second-order model), so a tensor costs one forward pass, not one a
   quality;
3. lowers qualities greedily, the most bytes saved per unit of distortion first, while the sum
   of the tensors' distortions stays within a budget (HAWQ's and HAQ's additive model);
4. measures the whole allocation, since distortions do not quite add, and searches the budget
   (bisection, at most ``rounds`` measurements) for the smallest package whose measured
   distortion is within ``limit``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace

import torch

from .codings import Coded
from .config import EncodeConfig
from .errors import ConfigError, TargetError
from .policy import Factors, check_input, choose, settled_coding

QUALITIES = (98, 95, 90, 85, 80, 75, 70, 60, 50, 40, 30, 20)
Distortion = Callable[[Mapping[str, torch.Tensor]], float]


@dataclass
class Allocation:
    """The chosen config, its coded tensors' bytes and measured distortion, and the record."""

    config: EncodeConfig
    nbytes: int
    distortion: float
    curves: dict[str, list[tuple[int, int, float]]] = field(
        default_factory=dict
    )  # name -> [(quality, bytes, distortion)]
    trials: list[dict] = field(default_factory=list)  # each whole-model measurement
    evaluations: int = 0


def digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors (names, dtypes, shapes and bytes): equal digests, equal tensors."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        h.update(f"\0{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def allocate(
    state: Mapping[str, torch.Tensor],
    config: EncodeConfig,
    distortion: Distortion,
    limit: float,
    qualities: Sequence[int] = QUALITIES,
    *,
    rounds: int = 6,
    log: Callable[[str], None] | None = None,
    cache: MutableMapping[str, list] | None = None,
    save: Callable[[MutableMapping[str, list]], None] | None = None,
    hessians: Mapping[str, torch.Tensor] | None = None,
) -> Allocation:
    """The smallest per-tensor qualities found whose measured ``distortion`` is within ``limit``
    (see the module's docstring). ``config.quality_for`` is replaced by the choice.

    ``cache`` holds curve points across runs, ``"name\tquality" -> [bytes, output error,
    digest]`` and ``"name\tprobe" -> [quality, distortion, output error]``: valid only for the
    same tensors, config, model and distortion (the caller keys it); ``save(cache)`` is called
    after each tensor's curve, so an interrupted run resumes. ``hessians``: error compensation,
    as ``encode`` takes it (pass the same to ``encode``), and the output errors' weights."""
    qualities = sorted(set(qualities), reverse=True)
    if not qualities or not all(isinstance(q, int) and 1 <= q <= 100 for q in qualities):
        raise ConfigError(f"qualities must be integers in 1..100, got {list(qualities)!r}")
    if not limit > 0:
        raise ConfigError(f"the distortion limit must be positive, got {limit!r}")
    say = log or (lambda _: None)
    state = {name: check_input(name, t) for name, t in state.items()}  # NaN, Inf, dtypes: as encode says
    coder = _Coder(state, config, qualities, distortion, Factors(state, hessians, config), hessians or {})
    top = qualities[0]
    best_choice = {n: top for n in coder.names}
    best_bytes, best = coder.whole(best_choice)
    trials = [{"budget": 0.0, "bytes": best_bytes, "distortion": best}]
    say(f"every tensor at quality {top}: {best_bytes:,} bytes, distortion {best:.5g} (limit {limit:.5g})")
    if best > limit:
        raise TargetError(
            f"unreachable: with every tensor at quality {top} (the highest given) the distortion is {best:.5g}, "
            f"over the limit {limit:.5g}; give higher qualities or a looser target",
            best,
        )
    curves = _curves(coder, qualities, limit, {} if cache is None else cache, save, say)
    low, high = 0.0, None
    passed = {tuple(best_choice.values()): True}  # choices measured: within the limit or not
    for _ in range(rounds):  # bisect the budget for the smallest package within the limit
        scale = 2 * max(low, 0.5) if high is None else (low + high) / 2
        choice = _greedy(curves, coder.names, scale * limit)
        key = tuple(choice.values())
        if key not in passed:
            nbytes, d = coder.whole(choice)
            passed[key] = d <= limit
            trials.append({"budget": scale * limit, "bytes": nbytes, "distortion": d})
            say(f"budget {scale * limit:.5g}: {nbytes:,} bytes, measured distortion {d:.5g}")
            if d <= limit and nbytes < best_bytes:
                best_choice, best_bytes, best = choice, nbytes, d
        low, high = (scale, high) if passed[key] else (low, scale)
    chosen = replace(config, quality=top, quality_for=tuple(best_choice.items()))
    return Allocation(chosen, best_bytes, best, curves, trials, coder.evaluations)


class _Coder:
    """Each tensor coded at each quality once (tensors raw or int8 whatever the quality: once, at
    the top quality), and the whole-model measurements counted."""

    def __init__(
        self,
        state: dict[str, torch.Tensor],
        config: EncodeConfig,
        qualities: list[int],
        distortion: Distortion,
        factor: Factors,
        hessians: Mapping[str, torch.Tensor],
    ):
        self.state, self.distortion, self.factor, self.evaluations = state, distortion, factor, 0
        self.hessians = hessians
        self.at = {q: config.at_quality(q) for q in qualities}
        top = qualities[0]
        self.coded: dict[tuple[str, int], Coded] = {}
        fixed: dict[str, Coded] = {}
        for name, t in state.items():
            c = choose(name, t, self.at[top], factor.get(name))
            if (
                settled_coding(t, self.at[top].for_tensor(name)) is None
            ):  # int8 where it dominates the top quality's JPEG, still a candidate
                self.coded[name, top] = c
            else:
                fixed[name] = c
        self.names = [n for n in state if n not in fixed]
        self.fixed_bytes = sum(c.nbytes for c in fixed.values())
        self.fixed_values = {
            n: c.decode() for n, c in fixed.items() if c.entry["coding"] != "raw" or c.stored[n].dtype != state[n].dtype
        }

    def measure(self, replaced: Mapping[str, torch.Tensor]) -> float:
        self.evaluations += 1
        return float(self.distortion(replaced))

    def coded_at(self, name: str, q: int) -> Coded:
        if (name, q) not in self.coded:
            self.coded[name, q] = choose(name, self.state[name], self.at[q], self.factor.get(name))
        return self.coded[name, q]

    def output_error(self, name: str, q: int) -> float:
        """``Σ_rows e H eᵀ`` of the tensor's coding error ``e`` at ``q``: ``H`` its inputs' second
        moment, or its rows' weights for a lookup table, else ``I``."""
        original = self.state[name]
        error = (self.coded_at(name, q).decode().to(torch.float32) - original.to(torch.float32)).reshape(
            len(original), -1
        )
        h = self.hessians.get(name)
        if h is not None and h.dim() == 2:
            return float(((error @ h.to(torch.float32)) * error).double().sum())
        squares = error.double().square().sum(1)
        return float(squares @ h.double()) if h is not None else float(squares.sum())

    def forget(self, name: str, keep: int | None = None) -> None:
        """Drop ``name``'s codings but the one at ``keep``: all of a large model's qualities
        would take several times its package's size."""
        for key in [k for k in self.coded if k[0] == name and k[1] != keep]:
            del self.coded[key]

    def whole(self, chosen: Mapping[str, int]) -> tuple[int, float]:
        """Bytes and measured distortion of the package with each tensor at its chosen quality
        (whose codings are kept for the next choice, which shares most of them)."""
        values = {**self.fixed_values, **{n: self.coded_at(n, q).decode() for n, q in chosen.items()}}
        nbytes = self.fixed_bytes + sum(self.coded_at(n, q).nbytes for n, q in chosen.items())
        for n, q in chosen.items():
            self.forget(n, keep=q)
        return nbytes, self.measure(values)


def _curves(
    coder: _Coder,
    qualities: list[int],
    limit: float,
    cache: MutableMapping[str, list],
    save: Callable | None,
    say: Callable[[str], None],
) -> dict[str, list[tuple[int, int, float]]]:
    """Each tensor's ``(quality, bytes, distortion)`` alone, from the top quality down to the
    first over ``limit``: the distortion measured at ``probe`` and scaled by the output error
    elsewhere; a quality with the same steps as the one above it is left out."""
    probe = qualities[len(qualities) // 2]
    curves: dict[str, list[tuple[int, int, float]]] = {}
    for i, name in enumerate(coder.names, 1):
        point = cache.get(f"{name}\tprobe")
        if not (_valid(point, (int, float, float)) and point[0] == probe):
            measured = coder.measure({name: coder.coded_at(name, probe).decode()})
            point = [probe, measured, coder.output_error(name, probe)]
            cache[f"{name}\tprobe"] = point
        _, measured, error = point
        scale = max(measured, 0.0) / error if error > 0 else 0.0
        curves[name], previous = [], None
        for q in qualities:
            point = cache.get(f"{name}\t{q}")
            if not _valid(point, (int, float, str)):
                c = coder.coded_at(name, q)
                point = [c.nbytes, coder.output_error(name, q), digest(c.stored)]
                cache[f"{name}\t{q}"] = point
            nbytes, error, key = point
            if key == previous:
                continue  # another quality with the same steps (the flat table's 92 and 90)
            previous = key
            d = max(measured, 0.0) if q == probe else scale * error
            curves[name].append((q, nbytes, d))
            if d > limit:  # lower qualities cannot fit either
                break
        coder.forget(name)
        if save is not None:
            save(cache)
        say(f"[{i}/{len(coder.names)}] {name}: " + ", ".join(f"q{q} {b:,} B {d:.3g}" for q, b, d in curves[name]))
    return curves


def _valid(point: object, types: tuple[type, ...]) -> bool:
    """A cached point of the given types (a cache file is read from disk, so anything may be in it)."""
    return (
        isinstance(point, list)
        and len(point) == len(types)
        and all(isinstance(v, t) and not isinstance(v, bool) for v, t in zip(point, types))
    )


def _greedy(curves: dict[str, list[tuple[int, int, float]]], names: list[str], budget: float) -> dict[str, int]:
    """Qualities lowered one step at a time, the most bytes saved per unit of distortion first,
    while the sum of the tensors' distortions stays within ``budget``."""
    level = {n: 0 for n in names}
    left = budget - sum(curves[n][0][2] for n in names)
    while True:
        steps = []
        for n in names:
            i = level[n]
            if i + 1 < len(curves[n]):
                (_, b0, d0), (_, b1, d1) = curves[n][i], curves[n][i + 1]
                if d1 - d0 <= left:
                    steps.append(((b0 - b1) / max(d1 - d0, 1e-12), n, d1 - d0))
        if not steps:
            return {n: curves[n][level[n]][0] for n in names}
        _, n, dd = max(steps)
        level[n] += 1
        left -= dd
