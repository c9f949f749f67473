"""Loading Hugging Face checkpoints safely: safetensors only unless pickle is allowed, never remote code."""

from __future__ import annotations

from pathlib import Path

from .assets import resolve_model
from .errors import ModelError, require

PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def check_weights_format(name_or_path: str, allow_pickle: bool) -> None:
    """A local checkpoint with only pickle weights is refused unless allow_pickle (unpickling runs code)."""
    path = Path(name_or_path)
    if not path.is_dir():
        return  # hub id: from_pretrained(use_safetensors=True) enforces it remotely
    has_safe = any(path.glob("*.safetensors"))
    has_pickle = any((path / name).exists() for name in PICKLE_FILES)
    if has_pickle and not has_safe and not allow_pickle:
        raise ModelError(
            f"{path} holds only pickle weights (pytorch_model.bin); loading them can run arbitrary code. "
            "Convert to safetensors, or pass --allow-pickle if you trust the source."
        )
    if not has_safe and not has_pickle:
        raise ModelError(f"{path} holds no model weights (*.safetensors).")


def load_tokenizer(name_or_path: str):
    transformers = require("transformers", "train")
    return transformers.AutoTokenizer.from_pretrained(resolve_model(name_or_path), trust_remote_code=False)


def load_classifier(name_or_path: str, allow_pickle: bool = False, **config_overrides):
    """AutoModelForSequenceClassification from a path, alias or hub id."""
    transformers = require("transformers", "train")
    resolved = resolve_model(name_or_path)
    check_weights_format(resolved, allow_pickle)
    try:
        return transformers.AutoModelForSequenceClassification.from_pretrained(
            resolved, use_safetensors=None if allow_pickle else True, trust_remote_code=False, **config_overrides
        )
    except OSError as exc:
        raise ModelError(f"Cannot load a model from '{name_or_path}': {exc}") from None
