"""`load` and `save`: one entry point for every kind of model file jaxcirc reads.

Every path is local unless it is written `hf://org/name` (optionally `@revision`): a mistyped
local path is reported as missing, never looked up on the Hugging Face hub.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..models import Transformer
from ..models._site import nearest
from ._checkpoint import has_interrupted_save, is_checkpoint, load_checkpoint, save_checkpoint
from ._hf import INDEX, WEIGHTS, load_hf

HUB = "hf://"
_EXPECTED = (
    "a jaxcirc checkpoint directory, a Hugging Face directory (config.json + model.safetensors), "
    "a .gguf file, or a Hugging Face hub model written hf://org/name"
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _download(repo_id: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ImportError(
            f"loading hf://{repo_id} needs huggingface_hub (pip install huggingface_hub)"
        ) from None
    try:
        return Path(snapshot_download(
            repo_id, revision=revision,
            allow_patterns=["*.json", "*.safetensors", "tokenizer.model"],
        ))
    except Exception as e:  # offline, unknown repo, gated repo, ...
        raise FileNotFoundError(
            f"downloading hf://{repo_id} from the Hugging Face hub failed (offline? set "
            f"HF_HUB_OFFLINE=1 to use the local cache only): {type(e).__name__}: {e}"
        ) from e


def _hub(path: str, kwargs: dict) -> Transformer:
    repo_id, _, revision = path[len(HUB):].partition("@")
    if not _HUB_ID.match(repo_id):
        raise ValueError(f"{path!r} is not a hub model id; expected hf://org/name or "
                         "hf://org/name@revision (such as 'hf://EleutherAI/pythia-14m')")
    return load_hf(_download(repo_id, revision or None), **kwargs)


def _missing(path: str | os.PathLike, p: Path) -> FileNotFoundError:
    """The error for a local path that does not exist, with the nearest existing name."""
    parent = p.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    hint = ""
    if parent.is_dir():
        missing = p.relative_to(parent).parts[0]  # the first component that is missing
        try:
            hint = nearest(missing, sorted(q.name for q in parent.iterdir()
                                           if not q.name.startswith(".")))
        except OSError:
            pass
        if parent != p.parent:
            hint = f" ({parent / missing} is missing){hint}"
    text = os.fspath(path)
    hub = (f"; to download the Hugging Face hub model {text!r}, write 'hf://{text}'"
           if isinstance(path, str) and _HUB_ID.match(text) else "")
    return FileNotFoundError(f"{p} does not exist{hint}{hub}; expected {_EXPECTED}")


def load(path: str | os.PathLike, **kwargs) -> Transformer:
    """Load a `Transformer` from whatever `path` names.

    - a directory written by `jaxcirc.save` (`load_checkpoint`, which also recovers the previous
      checkpoint when a save was killed while it swapped them);
    - a Hugging Face directory with `config.json` and safetensors weights (`load_hf`);
    - a `.gguf` file (`load_gguf`);
    - `"hf://org/name"` or `"hf://org/name@revision"`: a Hugging Face hub model, fetched with
      `huggingface_hub.snapshot_download`. Any other string is a local path, never a hub id.

    Keyword arguments go to the loader: `dtype="bfloat16"` casts the weights,
    `allow_nonfinite=True` loads weights holding NaN or inf (refused by default, naming the
    tensor).
    """
    if isinstance(path, str) and path.startswith(HUB):
        return _hub(path, kwargs)
    p = Path(path).expanduser()
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
    if has_interrupted_save(p):
        return load_checkpoint(p, **kwargs)  # moves the previous checkpoint back, or says why not
    raise _missing(path, p)


def save(path: str | os.PathLike, model: Transformer) -> None:
    """Save `model` atomically as a checkpoint directory (`save_checkpoint`)."""
    save_checkpoint(path, model)
