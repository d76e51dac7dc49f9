"""SAEs and training runs on disk: orbax arrays, a JSON description, hashes, atomic swaps.

An SAE folder holds `sae.json` (architecture, sizes, site, static fields, and any `info` such
as metrics), `arrays/` (an orbax PyTree checkpoint) and, written last, `JAXCIRC_SAE`: the
SHA-256 of every array's bytes. A training checkpoint holds `state.json` (the SAEs it trains,
the step, the tokens seen, the stream position, the history) and `arrays/` (every SAE's
parameters, optimizer state and dead-latent counters), with the marker `JAXCIRC_SAE_TRAIN`.

Every save is `jaxcirc._atomic.replace_dir` (a hidden sibling swapped into place under a lock);
a load that finds `NAME` missing after a killed save puts the previous version back first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .._atomic import recover as _recover
from .._atomic import replace_dir
from .._processes import checkpointer, written_by_one
from ._sae import CLASSES, SAE, BatchTopKSAE, JumpReLUSAE, TopKSAE

SAE_MARKER = "JAXCIRC_SAE"
TRAIN_MARKER = "JAXCIRC_SAE_TRAIN"
FORMAT = 1


def _sha(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x).view(np.uint8).reshape(-1).data).hexdigest()


def _write_arrays(directory: Path, arrays: dict[str, np.ndarray]) -> None:
    with checkpointer() as writer:  # this process alone (`_save_dir`: process 0)
        writer.save(directory.absolute(), arrays)


def _read_arrays(directory: Path) -> dict[str, np.ndarray]:
    import orbax.checkpoint as ocp

    with ocp.PyTreeCheckpointer() as reader:
        tree = reader.restore(directory.absolute())
    return {k: np.asarray(v) for k, v in tree.items()}


def _save_dir(path: Path, meta_name: str, meta: dict, arrays: dict, marker: str) -> Path:
    """Write atomically. Under `jax.distributed` (several processes, one shared folder) only
    process 0 writes, and every process returns once it has (`jaxcirc._processes`)."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}  # replicated arrays: every process
    written_by_one(lambda: _write_dir(path, meta_name, meta, arrays, marker), str(path))
    return Path(path)


def _write_dir(path: Path, meta_name: str, meta: dict, arrays: dict, marker: str) -> Path:
    def fill(tmp: Path) -> None:
        _write_arrays(tmp / "arrays", arrays)
        (tmp / meta_name).write_text(json.dumps(meta, indent=1) + "\n")
        hashes = {k: {"sha256": _sha(v), "shape": list(v.shape), "dtype": str(v.dtype)}
                  for k, v in arrays.items()}  # fmt: skip
        with open(tmp / marker, "w") as f:  # written last: the folder is complete
            f.write(json.dumps({"format": FORMAT, "arrays": hashes}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    what = f"a saved {'SAE' if marker == SAE_MARKER else 'training run'} ({marker} missing)"
    return replace_dir(path, fill, lambda p: (p / marker).is_file(), what)


def _load_dir(path: Path, meta_name: str, marker: str) -> tuple[dict, dict]:
    path = Path(path)
    _recover(path)
    if not (path / marker).is_file():
        what = "an SAE saved by jaxcirc.sae.save" if marker == SAE_MARKER else "a training run"
        if (path / TRAIN_MARKER).is_file() and marker == SAE_MARKER:
            what += " (this folder holds a training checkpoint: load the SAEs it trains)"
        raise FileNotFoundError(f"{path} is not {what}: {marker} is missing")
    record = json.loads((path / marker).read_text())
    if record.get("format") != FORMAT:
        raise ValueError(f"{path}: format {record.get('format')} is not {FORMAT}")
    meta = json.loads((path / meta_name).read_text())
    arrays = _read_arrays(path / "arrays")
    expected = record["arrays"]
    if set(arrays) != set(expected):
        raise ValueError(f"{path}: arrays {sorted(arrays)} do not match the marker's list")
    for name, x in arrays.items():
        if _sha(x) != expected[name]["sha256"]:
            raise ValueError(f"{path}: array {name} does not match its hash (corrupted file?)")
    return meta, arrays


# ------------------------------------------------------------------------------- one SAE


def describe(sae: SAE) -> dict:
    """The JSON description of `sae`: what `load` rebuilds it from."""
    out = {"architecture": sae.architecture, "d_in": sae.d_in, "d_sae": sae.d_sae,
           "site": sae.site, "center": sae.center, "dtype": str(sae.W_enc.dtype)}  # fmt: skip
    if isinstance(sae, (TopKSAE, BatchTopKSAE)):
        out["k"] = sae.k
    if isinstance(sae, JumpReLUSAE):
        out["bandwidth"] = sae.bandwidth
    return out


def save(path, sae: SAE, *, info: dict | None = None) -> Path:
    """Write `sae` to the folder `path` (atomically); `info` (JSON-able, e.g. metrics) is
    stored beside it and returned by `load_info`."""
    if not isinstance(sae, SAE):
        raise TypeError(f"save takes a jaxcirc.sae.SAE; got {type(sae).__name__}")
    arrays = {f.name: getattr(sae, f.name) for f in dataclasses.fields(sae)
              if isinstance(getattr(sae, f.name), jax.Array | np.ndarray)}  # fmt: skip
    meta = {"sae": describe(sae), "info": info or {}}
    return _save_dir(Path(path), "sae.json", meta, arrays, SAE_MARKER)


def load(path, *, architecture: str | None = None, d_in: int | None = None,
         d_sae: int | None = None) -> SAE:  # fmt: skip
    """The SAE saved at `path`, its hashes verified. `architecture`, `d_in`, `d_sae`, when
    given, are what the caller expects: another type or shape is an error naming both."""
    meta, arrays = _load_dir(Path(path), "sae.json", SAE_MARKER)
    d = meta["sae"]
    expect = {"architecture": architecture, "d_in": d_in, "d_sae": d_sae}
    for key, want in expect.items():
        if want is not None and d[key] != want:
            raise ValueError(
                f"{path} holds a {d['architecture']!r} SAE with d_in={d['d_in']}, "
                f"d_sae={d['d_sae']}; expected {key}={want!r}"
            )
    cls = CLASSES[d["architecture"]]
    kwargs = {name: jnp.asarray(x) for name, x in arrays.items()}
    if "k" in d:
        kwargs["k"] = d["k"]
    if "bandwidth" in d:
        kwargs["bandwidth"] = d["bandwidth"]
    return cls(**kwargs, site=d["site"], center=d["center"])


def load_info(path) -> dict:
    """The `info` saved with the SAE at `path` (e.g. its metrics)."""
    return json.loads((Path(path) / "sae.json").read_text())["info"]


# ------------------------------------------------------------------------------- a run


def save_training(path, trainer, *, stream=None) -> Path:
    """Write a `Trainer`'s state: arrays, step, tokens, stream position, history."""
    leaves = trainer.state_arrays()
    arrays = {f"leaf_{i:05d}": np.asarray(x) for i, x in enumerate(leaves)}
    meta = {
        "saes": trainer.describe(),
        "sparsity": [float(c) for c in trainer.coefs],
        "steps": trainer.steps,
        "config": dataclasses.asdict(trainer.config),
        "step": trainer.step,
        "tokens": trainer.tokens,
        "stream": stream,
        "history": trainer.history,
    }
    return _save_dir(Path(path), "state.json", meta, arrays, TRAIN_MARKER)


def load_training(path, trainer, *, retarget: bool = False) -> dict | None:
    """Restore `trainer` from the checkpoint at `path`; `None` (nothing done) when `path`
    holds none. A checkpoint of other SAEs (type, sizes, site, k), another step count,
    sparsity or configuration is an error naming the difference; with `retarget`, another
    step count is accepted (the run is lengthened or shortened from where it stopped)."""
    path = Path(path)
    _recover(path)
    if not (path / TRAIN_MARKER).is_file():
        if (path / SAE_MARKER).is_file():
            raise ValueError(f"{path} holds a saved SAE, not a training checkpoint")
        return None
    meta, arrays = _load_dir(path, "state.json", TRAIN_MARKER)
    mine = trainer.describe()
    theirs = meta["saes"]
    if len(theirs) != len(mine):
        raise ValueError(
            f"the checkpoint at {path} trains {len(theirs)} SAEs; this run trains {len(mine)}"
        )
    for i, (a, b) in enumerate(zip(theirs, mine)):
        if a != b:
            raise ValueError(
                f"the checkpoint at {path} trains, as SAE {i}, {_words(a)}; this run's SAE {i} "
                f"is {_words(b)}: resume with the same SAEs, or use another checkpoint folder"
            )
    if retarget and meta["step"] > trainer.steps:
        raise ValueError(
            f"the checkpoint at {path} is at step {meta['step']}, past this run's "
            f"steps={trainer.steps}"
        )
    for key, value in (("steps", None if retarget else trainer.steps),
                       ("sparsity", [float(c) for c in trainer.coefs]),
                       ("config", dataclasses.asdict(trainer.config))):  # fmt: skip
        if value is not None and meta[key] != json.loads(json.dumps(value)):
            raise ValueError(
                f"the checkpoint at {path} was written with {key}={meta[key]}; this run has "
                f"{key}={value}: resume with the same settings"
            )
    leaves = [arrays[f"leaf_{i:05d}"] for i in range(len(arrays))]
    trainer.restore_arrays(leaves)
    mine_shapes = [tuple(x.shape) for x in trainer.state_arrays()]
    if mine_shapes != [tuple(x.shape) for x in leaves]:
        raise ValueError(f"the checkpoint at {path} has arrays of other shapes than this run's")
    trainer.step = meta["step"]
    trainer.tokens = meta["tokens"]
    trainer.history = meta["history"]
    return meta


def _words(d: dict) -> str:
    k = f", k={d['k']}" if d.get("k") is not None else ""
    site = f" at {d['site']!r}" if d.get("site") else ""
    return f"a {d['architecture']!r} SAE (d_in={d['d_in']}, d_sae={d['d_sae']}{k}){site}"
