"""Atomic, verified orbax checkpoints of a `Transformer`.

A checkpoint is a directory holding `config.json` (`TransformerConfig.to_json`), `arrays/` (an
orbax PyTree checkpoint of `state_dict(model)`, nested by dotted name) and, written last, the
marker `JAXCIRC_CHECKPOINT`: a JSON object with the format, the SHA-256 of `config.json`, of every
file under `arrays/` and of every array's bytes (with its shape and dtype).

A save is `jaxcirc._atomic.replace_dir`: a hidden sibling `.NAME.tmp-XXXXXXXX`, fsynced, swapped
into place under an exclusive lock on the parent, so a killed save never leaves a half-written
checkpoint under `NAME`; `load_checkpoint` moves a previous checkpoint set aside back into place
when `path` is missing. Only a directory holding the marker (or an empty one) is ever replaced.

Loading checks, in order and before reading any array: the marker, no symlinks inside, the
config's fields and sizes against the stored array shapes (so a config claiming ten million
layers is refused at once), the config's hash, every file's hash; then each array's hash and
that it is finite (`allow_nonfinite=True` skips the last).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import types
import typing
import warnings
from pathlib import Path

import jax
import numpy as np

from .._atomic import (
    fsync_path,
    has_interrupted_save,
    kill_point,
    locked,
    recover_locked,
    replace_dir,
)
from .._processes import checkpointer, written_by_one
from ..models import Site, Transformer, TransformerConfig, from_state_dict, state_dict
from ..models._site import nearest
from ._hf import check_dtype, check_finite

MARKER = "JAXCIRC_CHECKPOINT"
FORMAT = 2
_READS = (1, 2)  # format 1: no hashes (jaxcirc before content hashes)


def is_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` looks like a jaxcirc checkpoint, complete (marker) or not (`arrays/`)."""
    path = Path(path)
    return (path / MARKER).is_file() or (path / "arrays").is_dir()


def _marked(path: Path) -> bool:
    """Whether `path` is a directory that `save_checkpoint` wrote (it holds the marker file)."""
    marker = path / MARKER
    return path.is_dir() and not path.is_symlink() and marker.is_file() and not marker.is_symlink()


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
    with checkpointer() as writer:  # this process alone (`save_checkpoint`: process 0)
        writer.save(directory.absolute(), _nest(arrays))


def _read_arrays(directory: Path) -> dict:
    import orbax.checkpoint as ocp

    with ocp.PyTreeCheckpointer() as reader:
        return _flatten(reader.restore(directory.absolute()))


def _fsync_write(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _sha256(data) -> str:
    return hashlib.sha256(data).hexdigest()


def _array_sha256(value: np.ndarray) -> str:
    return _sha256(np.ascontiguousarray(value).view(np.uint8).reshape(-1).data)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(root: Path) -> list[Path]:
    """Every file under `root`, refusing symlinks (a checkpoint never contains one)."""
    found = []
    for directory, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            entry = Path(directory) / name
            if entry.is_symlink():
                raise ValueError(
                    f"{entry} is a symlink; a jaxcirc checkpoint never contains one, "
                    "so it refuses to follow it (copy the real files in instead)"
                )
            if name in filenames:
                found.append(entry)
    return sorted(found)


def _fsync_tree(root: Path) -> None:
    for directory, _, filenames in os.walk(root):
        for name in filenames:
            fsync_path(Path(directory) / name)
        fsync_path(Path(directory))


def save_checkpoint(path: str | os.PathLike, model: Transformer) -> None:
    """Save `model` atomically to the directory `path`, replacing a checkpoint already there.

    Refuses a model carrying interventions (remove them with `jaxcirc.clear`), and refuses to
    replace anything but a jaxcirc checkpoint (a directory holding `JAXCIRC_CHECKPOINT`) or an
    empty directory. Leftovers of killed saves of `path` are cleaned up first.
    """
    if not isinstance(model, Transformer):
        raise TypeError(f"save_checkpoint expects a Transformer; got {type(model).__name__}")
    sites = jax.tree_util.tree_leaves(model, is_leaf=lambda x: isinstance(x, Site))
    intervened = [s.name for s in sites if isinstance(s, Site) and s.intervention is not None]
    if intervened:
        raise ValueError(
            f"model carries interventions at {intervened[:3]}; save "
            "`jaxcirc.clear(model)` (the model without them) instead"
        )
    config = model.cfg.to_json()
    arrays = state_dict(model)  # host arrays, whole in every process

    def write():
        what = f"a jaxcirc checkpoint (it has no {MARKER} file)"
        replace_dir(path, lambda tmp: _fill(tmp, config, arrays), _marked, what)

    written_by_one(write, str(path))  # under jax.distributed: process 0 alone


def _fill(tmp: Path, config: str, arrays: dict) -> None:
    _fsync_write(tmp / "config.json", config)
    kill_point("config")
    _write_arrays(tmp / "arrays", arrays)
    _fsync_tree(tmp / "arrays")
    kill_point("arrays")
    marker = {
        "kind": "transformer",
        "format": FORMAT,
        "config_sha256": _sha256(config.encode()),
        "files": {
            f.relative_to(tmp / "arrays").as_posix(): _file_sha256(f)
            for f in _files(tmp / "arrays")
        },
        "arrays": {
            name: {
                "shape": list(value.shape),
                "dtype": str(value.dtype),
                "sha256": _array_sha256(value),
            }
            for name, value in arrays.items()
        },
    }
    _fsync_write(tmp / MARKER, json.dumps(marker, indent=1, sort_keys=True))  # complete


def recover_interrupted(path: str | os.PathLike) -> bool:
    """When `path` is missing: clean up what killed saves of it left, moving a previous version
    back into place (with a warning). Returns whether a killed save was found."""
    path = Path(path).expanduser()
    if path.exists() or path.is_symlink() or not path.parent.is_dir():
        return False
    with locked(path.parent):
        interrupted = has_interrupted_save(path)
        if not path.exists() and recover_locked(path):
            warnings.warn(
                f"a save of {path} was interrupted; the previous checkpoint was "
                "moved back into place",
                stacklevel=3,
            )
    return interrupted


def _read_marker(path: Path) -> dict:
    file = path / MARKER
    try:
        marker = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"checkpoint marker {file} is corrupt ({type(e).__name__}: {e}); the "
            "checkpoint cannot be trusted: save the model again"
        ) from None
    fmt = marker.get("format") if isinstance(marker, dict) else None
    if fmt not in _READS:
        raise ValueError(
            f"checkpoint marker {file} has format {fmt!r}; this version of jaxcirc "
            f"reads formats {list(_READS)}"
        )
    if fmt == 1:
        return marker
    entries = marker.get("arrays")
    ok = (
        isinstance(marker.get("config_sha256"), str)
        and isinstance(marker.get("files"), dict)
        and isinstance(entries, dict)
        and all(
            isinstance(e, dict)
            and isinstance(e.get("shape"), list)
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in e["shape"])
            and isinstance(e.get("dtype"), str)
            and isinstance(e.get("sha256"), str)
            for e in entries.values()
        )
    )
    if not ok:
        raise ValueError(
            f"checkpoint marker {file} is corrupt: expected 'config_sha256', 'files' "
            "and 'arrays' (name -> shape, dtype, sha256); save the model again"
        )
    return marker


# ---- config validation, before anything is built ------------------------------------------

_HINTS = typing.get_type_hints(TransformerConfig)


def _fits(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is typing.Literal:
        return isinstance(value, str) and value in args
    if origin is tuple:
        return isinstance(value, (list, tuple)) and all(_fits(v, args[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        )
    if hint is str:
        return isinstance(value, str)
    return True


def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return f"one of {list(args)}"
    if origin is tuple:
        return f"a list of {_describe(args[0])}s"
    return {
        type(None): "null",
        bool: "true/false",
        int: "an int",
        float: "a finite number",
        str: "a string",
    }.get(hint, str(hint))


def _config(path: Path, manifest: dict[str, tuple], marker: dict) -> TransformerConfig:
    """The checkpoint's `TransformerConfig`, checked against the stored arrays' shapes."""
    import equinox as eqx

    file = path / "config.json"
    try:
        text = file.read_text()
        data = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file} is not readable JSON ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file} holds a {type(data).__name__}; expected a JSON object")
    for key, value in data.items():
        if key not in _HINTS:
            raise ValueError(
                f"{file}: unknown field {key!r}{nearest(key, _HINTS)}; known: {sorted(_HINTS)}"
            )
        if not _fits(value, _HINTS[key]):
            raise ValueError(
                f"{file}: {key}={value!r}: expected {_describe(_HINTS[key])}"
                + (
                    nearest(value, typing.get_args(_HINTS[key]))
                    if typing.get_origin(_HINTS[key]) is typing.Literal
                    else ""
                )
            )
    layers = sorted(
        {int(m.group(1)) for name in manifest if (m := re.match(r"blocks\.(\d+)\.", name))}
    )
    if data.get("n_layers") != len(layers) or layers != list(range(len(layers))):
        held = f"blocks.0 to blocks.{layers[-1]}" if layers else "none"
        raise ValueError(
            f"{file}: n_layers={data.get('n_layers')!r}, but the stored arrays hold "
            f"{len(layers)} layers ({held}); the config does not belong to them"
        )
    try:
        cfg = TransformerConfig(**data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{file}: {e}") from None
    shapes = {
        name: jax.ShapeDtypeStruct(shape, np.dtype(dtype))
        for name, (shape, dtype) in manifest.items()
    }
    try:
        eqx.filter_eval_shape(from_state_dict, cfg, shapes)
    except ValueError as e:
        raise ValueError(f"{file} does not fit the stored arrays: {e}") from None
    want = marker.get("config_sha256")
    if want is not None and _sha256(text.encode()) != want:
        raise ValueError(
            f"{file} was changed after the save (its SHA-256 differs from the one in "
            f"{MARKER}); restore it, or load the arrays yourself with a new config"
        )
    return cfg


def load_checkpoint(
    path: str | os.PathLike, dtype: str | None = None, *, allow_nonfinite: bool = False
) -> Transformer:
    """Load a checkpoint written by `save_checkpoint`, verifying it first.

    **Arguments:**

    - `path`: the checkpoint directory. If it is missing because a save was killed while it
      swapped checkpoints, the previous checkpoint is moved back into place (with a warning).
    - `dtype`: optionally cast the weights (`"float32"`, `"bfloat16"`, `"float16"`).
    - `allow_nonfinite`: load weights holding NaN or inf instead of raising.

    **Raises:** `FileNotFoundError` (nothing there), `ValueError` naming the file, field or array
    at fault (corrupt marker or config, a config that does not fit the arrays, a hash mismatch, a
    symlink inside, a non-finite weight).
    """
    path = Path(path).expanduser()
    interrupted = recover_interrupted(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"no checkpoint directory at {path}"
            + (
                "; a first save to it was interrupted before it finished (its partial copy is "
                "now removed)"
                if interrupted
                else ""
            )
            + "; save the model with jaxcirc.save(path, model)"
        )
    if not (path / MARKER).is_file() and not any(path.iterdir()):
        raise FileNotFoundError(
            f"{path} is an empty directory, not a checkpoint; save the "
            "model there with jaxcirc.save(path, model)"
        )
    if not (path / MARKER).is_file():
        raise ValueError(
            f"{path} is an incomplete checkpoint: its completion marker {MARKER} is missing, so "
            "the save that wrote it did not finish; delete it and save the model again"
        )
    marker = _read_marker(path)
    for entry in (path / "config.json", path / MARKER, path / "arrays"):
        if entry.is_symlink():
            raise ValueError(
                f"{entry} is a symlink; a jaxcirc checkpoint never contains one, so "
                "it refuses to follow it (copy the real files in instead)"
            )
    files = _files(path / "arrays") if (path / "arrays").is_dir() else []
    if marker["format"] == 1:
        warnings.warn(
            f"{path} is a format-1 checkpoint without content hashes; save it again to add them",
            stacklevel=2,
        )
        arrays = _restore(path)
        manifest = {k: (tuple(v.shape), str(v.dtype)) for k, v in arrays.items()}
        cfg = _config(path, manifest, marker)
    else:
        manifest = {k: (tuple(e["shape"]), e["dtype"]) for k, e in marker["arrays"].items()}
        cfg = _config(path, manifest, marker)
        _check_files(path, files, marker["files"])
        arrays = _restore(path)
        _check_arrays(path, arrays, marker["arrays"])
    if dtype is not None:
        cfg = cfg.replace(dtype=check_dtype(dtype))
    for name, value in arrays.items():
        check_finite(value, name, f"checkpoint {path}", cfg.dtype, allow_nonfinite)
    return from_state_dict(cfg, arrays)


def _check_files(path: Path, files: list[Path], want: dict) -> None:
    have = {f.relative_to(path / "arrays").as_posix(): f for f in files}
    for rel, digest in sorted(want.items()):
        if rel not in have:
            raise ValueError(
                f"checkpoint {path} is missing arrays/{rel}; restore it from a "
                "backup or save the model again"
            )
        if _file_sha256(have[rel]) != digest:
            raise ValueError(
                f"checkpoint {path}: arrays/{rel} differs from the file the save "
                "wrote (SHA-256 mismatch): the checkpoint is corrupt; restore it "
                "from a backup or save the model again"
            )


def _restore(path: Path) -> dict:
    try:
        return _read_arrays(path / "arrays")
    except Exception as e:  # orbax/tensorstore raise many error types
        raise ValueError(f"cannot read the arrays of checkpoint {path}: {e}") from e


def _check_arrays(path: Path, arrays: dict, want: dict) -> None:
    missing, extra = sorted(set(want) - set(arrays)), sorted(set(arrays) - set(want))
    if missing or extra:
        raise ValueError(
            f"checkpoint {path}: the stored arrays do not match {MARKER}: missing "
            f"{missing[:5]}, unexpected {extra[:5]}"
        )
    for name, entry in want.items():
        value = np.asarray(arrays[name])
        if (
            list(value.shape) != entry["shape"]
            or str(value.dtype) != entry["dtype"]
            or _array_sha256(value) != entry["sha256"]
        ):
            raise ValueError(
                f"checkpoint {path}: array {name!r} differs from the one saved "
                f"(shape {value.shape} {value.dtype}, expected "
                f"{tuple(entry['shape'])} {entry['dtype']}, or SHA-256 mismatch): "
                "the checkpoint is corrupt; save the model again"
            )
