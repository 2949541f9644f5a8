"""Servable packages from the weights users have: ``jpegweights import`` in code.

    imported = from_torchvision("mobilenet_v2", "mobilenet_v2-b0353104.pth")
    imported = from_huggingface("all-MiniLM-L6-v2/")        # config.json, model.safetensors, tokenizer.json
    imported = from_state_dict("weights.safetensors", architecture, handler)
    write_folder(imported, Path("models/mobilenet_v2"), EncodeConfig(quality=90))

Each checks at import time that the tensors fit the architecture (``ArchitectureError`` names
the missing, unexpected and mis-shaped tensors) and that the handler's config is valid, by
building the module and running it once on the handler's example.
"""

from __future__ import annotations

import json
import os
import pickle  # only its exception class: torch.load(weights_only=True) raises it
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from jpegweights.codec import EncodeConfig, encode
from jpegweights.files import atomic_folder, atomic_path

from . import create, load, trim_state
from .errors import HandlerConfigError, described

__all__ = ["Imported", "from_huggingface", "from_state_dict", "from_torchvision", "read_state", "write_folder"]


@dataclass
class Imported:
    state: dict[str, torch.Tensor]
    architecture: dict[str, Any]
    handler: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # what the import changed or guessed, for the user

    def check(self) -> Imported:
        """Build the module from the tensors and run the handler's example once."""
        load({"architecture": self.architecture, "handler": self.handler}, self.state)
        return self


def read_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, safetensors metadata) of a ``.safetensors`` file, or of a ``.pt``/``.pth``
    state_dict loaded with ``weights_only=True`` (no pickled code runs). ``ValueError`` if neither."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except Exception as exc:  # safetensors raises several types for a bad file
            raise ValueError(f"{path}: not a valid safetensors file ({str(exc)[:200]})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # objects beyond tensors: weights_only refuses to run their code
        raise ValueError(
            f"{path}: holds pickled objects, not only tensors (a whole model saved with torch.save(model)?); "
            "save its state_dict instead: torch.save(model.state_dict(), path)"
        ) from None
    except Exception as exc:  # torch raises many types for a bad file
        raise ValueError(f"{path}: cannot load as a state_dict with weights_only=True ({described(exc)})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # a training checkpoint
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{path}: not a state_dict (a dict of tensors)")
    return state, {}


def _torchvision_weights(name: str, file_name: str) -> tuple[Any, bool]:
    """The torchvision weights entry whose URL ends in ``file_name`` (exact: its labels and
    preprocessing are those the weights were trained with), else the model's default."""
    import torchvision.models

    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        return None, False
    for weights in enum:
        if Path(weights.url).name == file_name:
            return weights, True
    return enum.DEFAULT, False


def from_torchvision(
    name: str, weights: str | os.PathLike, kwargs: dict[str, Any] | None = None, handler: dict[str, Any] | None = None
) -> Imported:
    """A torchvision model from its name and a weights file. For classification models the
    handler (labels, resize, crop, mean, std) comes from torchvision's metadata for those
    weights, matched by file name."""
    state, _ = read_state(weights)
    architecture = {"kind": "torchvision", "name": name, "kwargs": dict(kwargs or {})}
    notes = []
    if handler is None:
        meta, exact = _torchvision_weights(name, Path(weights).name)
        categories = meta.meta.get("categories") if meta is not None else None
        transforms = meta.transforms() if categories else None
        if not hasattr(transforms, "crop_size"):
            raise HandlerConfigError(f"torchvision has no classification preprocessing for {name!r}; pass a handler")
        crop, resize = transforms.crop_size[0], transforms.resize_size[0]
        handler = {"name": "image-classification", "config": {
            "input_shape": [3, crop, crop], "resize": resize, "mean": list(transforms.mean),
            "std": list(transforms.std), "labels": list(categories), "top_k": 5,
        }}  # fmt: skip
        notes.append(
            f"labels and preprocessing from torchvision's {meta}"
            + ("" if exact else f" (no torchvision weights file is named {Path(weights).name}: the default's are used)")
        )
    return Imported(
        {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, architecture, handler, notes
    ).check()


def _sentence_transformers(directory: Path) -> dict[str, Any]:
    """Pooling, normalization and length from a sentence-transformers directory's files."""
    config: dict[str, Any] = {"pooling": "mean", "normalize": False, "max_length": 512}
    pooling = directory / "1_Pooling" / "config.json"
    if pooling.is_file():
        p = json.loads(pooling.read_text())
        config["pooling"] = "cls" if p.get("pooling_mode_cls_token") else "mean"
    modules = directory / "modules.json"
    if modules.is_file():
        config["normalize"] = any(m.get("type", "").endswith("Normalize") for m in json.loads(modules.read_text()))
    st = directory / "sentence_bert_config.json"
    if st.is_file():
        config["max_length"] = int(json.loads(st.read_text()).get("max_seq_length", 512))
    return config


def from_huggingface(directory: str | os.PathLike) -> Imported:
    """A Hugging Face encoder directory (``config.json``, ``model.safetensors``,
    ``tokenizer.json``, and sentence-transformers' pooling files if present) as a
    ``text-embedding`` package holding its tokenizer."""
    directory = Path(directory)
    for needed in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (directory / needed).is_file():
            raise ValueError(
                f"{directory}: no {needed} "
                "(a Hugging Face model directory has config.json, model.safetensors and tokenizer.json)"
            )
    config = json.loads((directory / "config.json").read_text())
    architecture = {"kind": "transformers", "config": config}
    state, _ = read_state(directory / "model.safetensors")
    state, dropped = trim_state(architecture, state)
    handler = {
        "name": "text-embedding",
        "config": {"tokenizer": (directory / "tokenizer.json").read_text(), **_sentence_transformers(directory)},
    }
    notes = [f"dropped {dropped}: buffers the module computes itself"] if dropped else []
    return Imported(state, architecture, handler, notes).check()


def from_state_dict(
    weights: str | os.PathLike, architecture: dict[str, Any], handler: dict[str, Any] | None = None
) -> Imported:
    """Any state_dict with an architecture and (optionally) a handler spec."""
    state, _ = read_state(weights)
    if not handler:  # the implicit handler of its architecture, written out
        implicit = create({"architecture": architecture})
        handler = {"name": implicit.name, "config": implicit.config}
    return Imported(state, architecture, handler).check()


def write_folder(imported: Imported, folder: Path, config: EncodeConfig, name: str | None = None) -> int:
    """A model-store folder: ``model.jpw`` (at ``config``), ``model.safetensors`` (the float
    source, so other qualities can be served) and ``model.json``. Returns the package's size.
    The folder is filled beside its place and renamed into it (``files.atomic_folder``), so a
    reader never sees half of it and a full disk leaves nothing behind; its files get the
    umask's modes, so a server running as another user can read them."""
    from safetensors.torch import save_file

    extra = {"architecture": imported.architecture, "handler": imported.handler}
    data = encode(imported.state, config, **extra)
    meta = {"name": name or folder.name, "version": "1", "package": "model.jpw", "source": "model.safetensors"}
    with atomic_folder(folder) as staging:
        with atomic_path(staging / "model.safetensors") as tmp:  # safetensors writes 0600 files: the mode
            metadata = {k: json.dumps(v) for k, v in extra.items()}
            save_file({k: v.contiguous() for k, v in imported.state.items()}, str(tmp), metadata=metadata)
        (staging / "model.jpw").write_bytes(data)
        (staging / "model.json").write_text(json.dumps(meta))
    return len(data)
