"""``fidelity``: how far packages at several qualities move a model's outputs on given inputs, as
a report (rows of method, setting, bytes and the metric) that the server and its page show.

>>> report = fidelity("models/mobilenet_v2/model.safetensors", "photos/", "kl", (50, 90))
>>> [(r["setting"], r["bytes"], r["kl"]) for r in report["rows"]]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jpegweights.codec import EncodeConfig, decode, encode, load_manifest
from jpegweights.handlers.errors import CalibrationError

from .calibrate import Calibration, read_inputs
from .models import load_state_dict

QUALITIES = (5, 10, 20, 50, 75, 90)


def fidelity(
    source: str | os.PathLike,
    data: str | os.PathLike,
    metric: str,
    qualities: Sequence[int] = QUALITIES,
    *,
    package: str | os.PathLike | None = None,
    trust_code: bool = False,
) -> dict[str, Any]:
    """The report of the float weights at ``source`` (whose metadata names the architecture and
    handler, as ``import --store`` writes them) coded at each of ``qualities``, measured against
    the float model on ``data`` with ``metric`` (``kl``, or ``cosine``: the mean cosine itself).

    ``package``: the package a store serves, measured as its quality's row; its encode settings
    code the other qualities too, as the server codes them (default ``EncodeConfig()``).
    Raises ``CalibrationError`` when the model cannot run on ``data``."""
    source, data = Path(source), Path(data)
    state, architecture, handler = load_state_dict(source)
    if architecture is None:
        raise CalibrationError(
            f"{source} names no architecture in its metadata: make it with 'jpegweights import --store'"
        )
    measure = Calibration(
        {"architecture": architecture, "handler": handler}, state, read_inputs(data), metric, trust_code=trust_code
    )
    served = Path(package).read_bytes() if package is not None else None
    config = EncodeConfig.from_dict(load_manifest(served).get("config", {})) if served is not None else EncodeConfig()
    packages = {q: encode(state, config.at_quality(q), architecture, handler) for q in qualities}
    if served is not None:
        packages[config.quality] = served
    value = (lambda d: d) if metric == "kl" else (lambda d: 1 - d)
    rows = [
        {"method": "float32", "setting": "-", "bytes": sum(t.numel() * 4 for t in state.values()), metric: value(0.0)}
    ]
    for q, coded in sorted(packages.items()):
        rows.append(
            {"method": "jpegweights", "setting": f"q{q}", "bytes": len(coded), metric: value(measure(decode(coded)))}
        )
    name = source.parent.name or source.name
    title = f"{name}: {metric} against the float model on {measure.samples} inputs from {data.name}"
    return {"title": title, "rows": rows}
