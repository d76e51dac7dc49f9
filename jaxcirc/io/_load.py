"""`load` and `save`: one entry point for every object jaxcirc saves and every model file it reads.

Every path is local unless it is written `hf://org/name` (optionally `@revision`): a mistyped
local path is reported as missing, never looked up on the Hugging Face hub.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .._atomic import has_interrupted_save
from ..models import Transformer, shard_model
from ..models._site import nearest
from ._checkpoint import is_checkpoint, load_checkpoint, recover_interrupted
from ._hf import INDEX, WEIGHTS, load_hf
from ._saved import check_kind, holds_saved, kind_of, load_object, save_object

HUB = "hf://"
_EXPECTED = (
    "a jaxcirc folder (written by jaxcirc.save), a Hugging Face directory (config.json + "
    "model.safetensors), a .gguf file, or a Hugging Face hub model written hf://org/name"
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
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=["*.json", "*.safetensors", "tokenizer.model"],
            )
        )
    except Exception as e:  # offline, unknown repo, gated repo, ...
        raise FileNotFoundError(
            f"downloading hf://{repo_id} from the Hugging Face hub failed (offline? set "
            f"HF_HUB_OFFLINE=1 to use the local cache only): {type(e).__name__}: {e}"
        ) from e


def _hub(path: str, kwargs: dict) -> Transformer:
    repo_id, _, revision = path[len(HUB) :].partition("@")
    if not _HUB_ID.match(repo_id):
        raise ValueError(
            f"{path!r} is not a hub model id; expected hf://org/name or "
            "hf://org/name@revision (such as 'hf://EleutherAI/pythia-14m')"
        )
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
            hint = nearest(
                missing, sorted(q.name for q in parent.iterdir() if not q.name.startswith("."))
            )
        except OSError:
            pass
        if parent != p.parent:
            hint = f" ({parent / missing} is missing){hint}"
    text = os.fspath(path)
    hub = (
        f"; to download the Hugging Face hub model {text!r}, write 'hf://{text}'"
        if isinstance(path, str) and _HUB_ID.match(text)
        else ""
    )
    return FileNotFoundError(f"{p} does not exist{hint}{hub}; expected {_EXPECTED}")


def load(path: str | os.PathLike, kind: str | None = None, **kwargs):
    """Load what `path` names: an object saved by `jaxcirc.save`, or a model file.

    - a folder written by `jaxcirc.save`: whatever it holds (`Transformer`, `MLPClassifier`,
      SAE, `Circuit` or mask, see `jaxcirc.io._saved`), its hashes verified. A folder missing
      because a save was killed while it swapped folders gets its previous version back;
    - a Hugging Face directory with `config.json` and safetensors weights (`load_hf`);
    - a `.gguf` file (`load_gguf`);
    - `"hf://org/name"` or `"hf://org/name@revision"`: a Hugging Face hub model, fetched with
      `huggingface_hub.snapshot_download`. Any other string is a local path, never a hub id.

    `kind` (one of `jaxcirc.io.KINDS`), when given, is what the caller expects: anything else is
    an error naming both kinds. Keyword arguments go to the reader: for models
    `dtype="bfloat16"` casts the weights, `allow_nonfinite=True` loads weights holding NaN or
    inf (refused by default, naming the tensor), `mesh=` (and `model_axis=`, default
    `"model"`) loads it model-parallel (`jaxcirc.models.shard_model`'s layout; Hugging Face and
    GGUF files are placed tensor by tensor as they are read, a jaxcirc checkpoint is read
    whole, then placed); for SAEs `architecture`, `d_in`, `d_sae` are checked.
    """
    if kind is not None:
        check_kind(kind)
    if isinstance(path, str) and path.startswith(HUB):
        _expect(path, "transformer", kind)
        return _hub(path, kwargs)
    p = Path(path).expanduser()
    if not p.exists() and not p.is_symlink() and has_interrupted_save(p):
        recover_interrupted(p)  # moves the previous version back, with a warning
        if not p.exists():
            raise FileNotFoundError(
                f"nothing saved at {p}: a first save to it was interrupted before it finished "
                "(its partial copy is now removed); save the model with jaxcirc.save(path, obj) "
                "(or the SAE, circuit or mask)"
            )
    if p.is_dir():
        found = kind_of(p)
        if found == "transformer" and "mesh" in kwargs:
            _expect(p, found, kind)
            return _placed(load_object, p, found, **kwargs)
        if found is not None:
            _expect(p, found, kind)
            return load_object(p, found, **kwargs)
        if is_checkpoint(p):  # arrays/ without its marker: load_checkpoint says what is wrong
            _expect(p, "transformer", kind)
            return _placed(load_checkpoint, p, **kwargs)
        if (p / "config.json").is_file() or (p / WEIGHTS).is_file() or (p / INDEX).is_file():
            _expect(p, "transformer", kind)
            return load_hf(p, **kwargs)
        raise FileNotFoundError(f"directory {p} holds no model; expected {_EXPECTED}")
    if p.is_file():
        if p.suffix.lower() == ".gguf":
            from ._gguf import load_gguf

            _expect(p, "transformer", kind)
            return load_gguf(p, **kwargs)
        inside = (
            f"; {p.name} is part of a saved folder: load the folder {p.parent}"
            if holds_saved(p.parent)
            else ""
        )
        raise ValueError(
            f"cannot load the file {p} (suffix {p.suffix!r}){inside}; expected {_EXPECTED}"
        )
    if _zoo_mlp(p):
        raise FileNotFoundError(
            f"{p} is not a folder, but {p}.json and {p}.safetensors are an MLP classifier "
            "written by jaxcirc.zoo's digits save: read them with "
            f"jaxcirc.zoo.digits_mlp({str(p)!r}), and save it with jaxcirc.save to get a folder "
            "jaxcirc.load reads"
        )
    raise _missing(path, p)


def _placed(reader, *args, mesh=None, model_axis: str = "model", **kwargs) -> Transformer:
    """A jaxcirc checkpoint read by `reader`, then split over `model_axis` of `mesh`."""
    model = reader(*args, **kwargs)
    return model if mesh is None else shard_model(model, mesh, model_axis)


def _zoo_mlp(p: Path) -> bool:
    try:
        return json.loads(Path(f"{p}.json").read_text()).get("kind") == "mlp_classifier"
    except (OSError, ValueError, AttributeError):
        return False


def _expect(path, found: str, kind: str | None) -> None:
    if kind is not None and kind != found:
        raise ValueError(
            f"{path} holds a saved {found}, not a {kind}; load it with "
            f"kind={found!r} (or without kind=)"
        )


def save(path: str | os.PathLike, obj) -> Path:
    """Save `obj` atomically to the folder `path`, with a JSON header naming its kind and format.

    `obj` is a `Transformer` (also a compiled abstraction), a `jaxcirc.models.MLPClassifier`
    (with its `Replacement`s, if masked), a `jaxcirc.sae.SAE`, a `jaxcirc.graph.Circuit`, or a
    mask (a dict of arrays). A killed save leaves the previous folder in place; a folder that
    holds another kind, or that jaxcirc did not write, is never replaced. Returns the folder.
    """
    return save_object(path, obj)
