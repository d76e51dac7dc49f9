"""Atomic orbax checkpoints of a `Transformer`.

A checkpoint is a directory holding `config.json` (`TransformerConfig.to_json`), `arrays/` (an
orbax PyTree checkpoint of `state_dict(model)`, nested by dotted name) and, written last, the
completion marker `JAXCIRC_CHECKPOINT`. A save is written into a hidden temporary sibling and
renamed into place, so `path` holds either the old checkpoint or the new one, never a mixture;
a directory without the marker is the remains of an interrupted save and refuses to load.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import jax

from ..models import Site, Transformer, TransformerConfig, from_state_dict, state_dict
from ._hf import check_dtype

MARKER = "JAXCIRC_CHECKPOINT"
FORMAT = 1


def is_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` looks like a jaxcirc checkpoint, complete (marker) or not (`arrays/`)."""
    path = Path(path)
    return (path / MARKER).is_file() or (path / "arrays").is_dir()


def _nest(flat: dict) -> dict:
    tree: dict = {}
    for name, value in flat.items():
        *parents, leaf = name.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _write_arrays(directory: Path, arrays: dict) -> None:
    import orbax.checkpoint as ocp

    with ocp.PyTreeCheckpointer() as checkpointer:
        checkpointer.save(directory.absolute(), _nest(arrays))


def _fsync_write(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(path: str | os.PathLike, model: Transformer) -> None:
    """Save `model` atomically to the directory `path`, replacing a checkpoint already there.

    Refuses a model carrying interventions (remove them with `jaxcirc.clear`), and refuses to
    replace a directory that is not a jaxcirc checkpoint.
    """
    if not isinstance(model, Transformer):
        raise TypeError(f"save_checkpoint expects a Transformer; got {type(model).__name__}")
    sites = jax.tree_util.tree_leaves(model, is_leaf=lambda x: isinstance(x, Site))
    intervened = [s.name for s in sites if isinstance(s, Site) and s.intervention is not None]
    if intervened:
        raise ValueError(f"model carries interventions at {intervened[:3]}; save "
                         "`jaxcirc.clear(model)` (the model without them) instead")
    path = Path(path)
    if path.exists() and not (path.is_dir() and (is_checkpoint(path) or not any(path.iterdir()))):
        raise FileExistsError(
            f"{path} exists and is not a jaxcirc checkpoint; refusing to replace it")
    arrays = state_dict(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = path.parent / f".{path.name}.tmp-{tag}"
    try:
        tmp.mkdir()
        _fsync_write(tmp / "config.json", model.cfg.to_json())
        _write_arrays(tmp / "arrays", arrays)
        _fsync_write(tmp / MARKER, json.dumps({"format": FORMAT}))  # last: the save is complete
        if path.exists():
            old = path.parent / f".{path.name}.old-{tag}"
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)  # put the previous checkpoint back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_checkpoint(path: str | os.PathLike, dtype: str | None = None) -> Transformer:
    """Load a checkpoint written by `save_checkpoint`; `dtype` optionally casts the weights."""
    path = Path(path)
    if not path.is_dir():
        moved = sorted(path.parent.glob(f".{path.name}.old-*")) if path.parent.is_dir() else []
        raise FileNotFoundError(
            f"no checkpoint directory at {path}"
            + (f"; an interrupted overwrite left the previous checkpoint at {moved[-1]}"
               if moved else "")
        )
    if not (path / MARKER).is_file():
        raise ValueError(
            f"{path} is an incomplete checkpoint: its completion marker {MARKER} is missing, so "
            "the save that wrote it did not finish; save the model again"
        )
    marker = json.loads((path / MARKER).read_text() or "{}")
    if marker.get("format") != FORMAT:
        raise ValueError(f"{path} has checkpoint format {marker.get('format')!r}; this version of "
                         f"jaxcirc reads format {FORMAT}")
    cfg = TransformerConfig.from_json((path / "config.json").read_text())
    if dtype is not None:
        cfg = cfg.replace(dtype=check_dtype(dtype))
    import orbax.checkpoint as ocp

    try:
        with ocp.PyTreeCheckpointer() as checkpointer:
            tree = checkpointer.restore((path / "arrays").absolute())
    except Exception as e:  # orbax/tensorstore raise many error types
        raise ValueError(f"cannot read the arrays of checkpoint {path}: {e}") from e
    return from_state_dict(cfg, _flatten(tree))
