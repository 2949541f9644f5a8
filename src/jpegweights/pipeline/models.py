"""Float models on disk: a safetensors file (or a ``.pt`` state_dict) and the architecture and
handler its metadata names, as ``jpegweights import --store`` and ``jpegweights train`` write them.

>>> state, architecture, handler = load_state_dict(Path("models/mnist-mlp/model.safetensors"))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from jpegweights.files import atomic_path
from jpegweights.handlers import validate_spec
from jpegweights.handlers.importers import read_state


def load_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, dict[str, Any] | None]:
    """(state_dict, architecture, handler): the last two from the safetensors metadata, if any."""
    state, metadata = read_state(path)
    return state, *(json.loads(metadata[k]) if k in metadata else None for k in ("architecture", "handler"))


def load_model(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, architecture) of a model ``jpegweights train`` wrote (a sequential spec)."""
    state, spec, _ = load_state_dict(path)
    if spec is None:
        raise ValueError(f"{path}: no architecture in its metadata (train it with 'jpegweights train')")
    return state, validate_spec(spec)


def save_model(path: str | Path, state: dict[str, torch.Tensor], spec: dict[str, Any], info: dict[str, Any]) -> None:
    """A trained model as safetensors, its architecture and training record in the metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(
            {k: v.contiguous() for k, v in state.items()},
            str(tmp),
            metadata={"architecture": json.dumps(spec), "training": json.dumps(info)},
        )
