"""Measured curve points of a calibrated search, kept on disk so that another target on the same
model and data reuses them (``compress(..., cache_dir=)``).

>>> path = cache_file(None, key(state, architecture, handler, config, "kl", Path("photos/"), [True, True]))
>>> points = read(path)            # {} when missing or damaged: measured again

A file is named by the SHA-256 of everything a point depends on, so a stale file is never read:
it is simply not found.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from jpegweights.codec import EncodeConfig
from jpegweights.codec.allocate import digest
from jpegweights.files import cache_dir, write_atomic
from jpegweights.handlers import Request

CURVES = 3  # what a cached curve point means: 3 since a point holds its output error, a probe the distortion


def default_dir() -> Path:
    """``$XDG_CACHE_HOME/jpegweights`` or ``~/.cache/jpegweights``."""
    return cache_dir()


def cache_file(directory: Path | None, name: str) -> Path:
    """The file of key ``name`` under ``directory`` (None: ``default_dir()``)."""
    return Path(directory or default_dir()) / "calibration" / f"{name}.json"


def key(
    state: Mapping[str, torch.Tensor],
    architecture: dict[str, Any] | None,
    handler: dict[str, Any] | None,
    config: EncodeConfig,
    metric: str,
    data: Path | Request,
    flags: list[Any],
) -> str:
    """SHA-256 of everything a curve point depends on: the tensors, the model, the handler, the
    encode settings but the qualities and the container, the metric, the calibration inputs,
    the flags that change a coding or a measure (compensation, rows by use, the kinds of
    input), and the revision of the codings
    (``CURVES``)."""
    h = hashlib.sha256()
    settings = {
        k: v for k, v in config.to_dict().items() if k not in ("quality", "quality_for", "compact")
    }  # the container moves no output
    h.update(
        json.dumps([architecture, handler, settings, metric, digest(state), flags, CURVES], sort_keys=True).encode()
    )
    if isinstance(data, Request):
        _hash_request(h, data)
        return h.hexdigest()
    data = Path(data)
    files = sorted(data.iterdir()) if data.is_dir() else [data]
    for f in files:
        if f.is_file():
            h.update(f"\0{f.name}\0".encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def _hash_request(h: Any, request: Request) -> None:
    """In-memory inputs: each image's bytes, each text, or the arrays as JSON."""
    for i, image in enumerate(request.images or ()):
        h.update(f"\0image{i}\0".encode())
        h.update(bytes(image))
    h.update(
        json.dumps([request.text, request.pairs, request.inputs, request.options], sort_keys=True, default=str).encode()
    )


def read(path: Path) -> dict:
    """A cache file's points, or none if it is missing or not what ``write`` writes."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def write(path: Path, points: dict, log: Callable[[str], None]) -> None:
    """``points`` into ``path`` atomically; a cache that cannot be written is only noted."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(points).encode())
    except OSError as exc:
        log(f"note: cannot keep measured points in {path}: {exc.strerror or exc}")
