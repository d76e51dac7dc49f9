"""`load` and `save`: one entry point for every kind of model file jaxcirc reads."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..models import Transformer
from ._checkpoint import is_checkpoint, load_checkpoint, save_checkpoint
from ._hf import INDEX, WEIGHTS, load_hf

_EXPECTED = (
    "a jaxcirc checkpoint directory, a Hugging Face directory (config.json + model.safetensors), "
    "a .gguf file, or a Hugging Face hub id such as 'EleutherAI/pythia-14m'"
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(
            f"{repo_id!r} is not a local path, and huggingface_hub is not installed to fetch it "
            "from the hub (pip install huggingface_hub)"
        ) from None
    try:
        return Path(snapshot_download(
            repo_id, allow_patterns=["*.json", "*.safetensors", "tokenizer.model"]
        ))
    except Exception as e:  # offline, unknown repo, gated repo, ...
        raise FileNotFoundError(
            f"{repo_id!r} is not a local path, and downloading it from the Hugging Face hub "
            f"failed (offline? set HF_HUB_OFFLINE=1 to use the local cache only): "
            f"{type(e).__name__}: {e}"
        ) from e


def load(path: str | os.PathLike, **kwargs) -> Transformer:
    """Load a `Transformer` from whatever `path` names.

    - a directory written by `jaxcirc.save` (`load_checkpoint`; `dtype=` casts);
    - a Hugging Face directory with `config.json` and safetensors weights (`load_hf`);
    - a `.gguf` file (`load_gguf`);
    - otherwise a hub id (`"org/name"`), fetched with `huggingface_hub.snapshot_download`.

    Keyword arguments (such as `dtype="bfloat16"`) go to the loader.
    """
    p = Path(path)
    if p.is_dir():
        if is_checkpoint(p):
            return load_checkpoint(p, **kwargs)
        if (p / "config.json").is_file() or (p / WEIGHTS).is_file() or (p / INDEX).is_file():
            return load_hf(p, **kwargs)
        raise FileNotFoundError(f"directory {p} holds no model; expected {_EXPECTED}")
    if p.is_file():
        if p.suffix.lower() == ".gguf":
            from ._gguf import load_gguf

            return load_gguf(p, **kwargs)
        raise ValueError(f"cannot load the file {p} (suffix {p.suffix!r}); expected {_EXPECTED}")
    if isinstance(path, str) and _HUB_ID.match(path) and not p.parent.exists():
        return load_hf(_download(path), **kwargs)
    raise FileNotFoundError(f"{p} does not exist; expected {_EXPECTED}")


def save(path: str | os.PathLike, model: Transformer) -> None:
    """Save `model` atomically as a checkpoint directory (`save_checkpoint`)."""
    save_checkpoint(path, model)
