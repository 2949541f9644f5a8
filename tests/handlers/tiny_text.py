"""A tiny BERT text-embedding model (a dozen words, 8 dimensions), built in a second, for the
handlers' and the service's tests of text packages.

>>> manifest, state = tiny_text()
>>> handlers.load(manifest, state).run(...)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "an", "example", "sentence", "##s"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
CONFIG = {
    "model_type": "bert", "vocab_size": len(SPECIAL) + len(WORDS), "hidden_size": 8, "num_hidden_layers": 1,
    "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 32, "type_vocab_size": 2,
}  # fmt: skip


def tokenizer_json(unk_token: str = "[UNK]", normalizer: dict[str, Any] | None = None) -> str:
    """A BERT-style WordPiece tokenizer.json over ``WORDS``; ``unk_token`` and ``normalizer`` replaceable."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    spec = json.loads(tok.to_str())
    spec["model"]["unk_token"] = unk_token
    if normalizer is not None:
        spec["normalizer"] = normalizer
    return json.dumps(spec)


def tiny_text(tokenizer: str | None = None, **config: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(manifest, state) of a seeded untrained tiny BERT; ``config`` fields replace ``CONFIG``'s."""
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(0)
    module = AutoModel.from_config(AutoConfig.for_model(**CONFIG)).eval()
    state = {k: v.detach().clone() for k, v in module.state_dict().items() if "position_ids" not in k}
    manifest = {
        "architecture": {"kind": "transformers", "config": {**CONFIG, **config}},
        "handler": {"name": "text-embedding", "config": {"tokenizer": tokenizer or tokenizer_json(), "max_length": 16}},
    }
    return manifest, state


def write_tiny_text(folder: Path, tokenizer: str | None = None, **config: Any) -> Path:
    """A model-store folder of ``tiny_text`` (not checked: it may hold a package that cannot load)."""
    from jpegweights.codec import EncodeConfig
    from jpegweights.handlers.importers import Imported, write_folder

    manifest, state = tiny_text(tokenizer, **config)
    write_folder(Imported(state, manifest["architecture"], manifest["handler"]), folder, EncodeConfig(quality=90))
    return folder
