"""The kinds of object `jaxcirc.save` writes and `jaxcirc.load` reads back: one folder each.

- `transformer`: a `jaxcirc.Transformer`, also a compiled abstraction (`models.narrow`); the
  orbax checkpoint of `save_checkpoint`, header `JAXCIRC_CHECKPOINT`.
- `sae`: a `jaxcirc.sae.SAE`; the folder of `jaxcirc.sae.save`, header `JAXCIRC_SAE`.
- `mlp_classifier`: a `jaxcirc.models.MLPClassifier` (a compiled abstraction of one is again
  one), with its `Replacement`s when masked; `jaxcirc.json` + `arrays.bin`.
- `circuit`: a `jaxcirc.graph.Circuit` (graph, mask, scores, info); `jaxcirc.json` + `arrays.bin`.
- `mask`: a dict of arrays (nested dicts, lists, tuples and JSON scalars too); the same.

`jaxcirc.json` is `{"kind", "format", "fields", "arrays"}`: `fields` is the object as tagged JSON
(`{"array": name, "type": "jax"|"numpy"|"scalar"}`, `{"tuple": [...]}`, `{"list": [...]}`,
`{"dict": {...}}`, or a JSON scalar), `arrays` gives each array's dtype, shape, byte offset in
`arrays.bin` and SHA-256. Every kind is written by `replace_dir`: a hidden sibling, then a swap,
so an interrupted save leaves the previous folder in place; a folder of another kind is never
replaced.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .._atomic import replace_dir
from ..graph import Circuit, FeatureGraph, Graph, Node, Scores
from ..models import MLPClassifier, Replacement, Transformer
from ..models._site import nearest
from ._checkpoint import MARKER, _fsync_write, load_checkpoint, save_checkpoint

HEADER, DATA, FORMAT = "jaxcirc.json", "arrays.bin", 1
KINDS = ("transformer", "mlp_classifier", "sae", "circuit", "mask")
_SAE_MARKER, _TRAIN_MARKER = "JAXCIRC_SAE", "JAXCIRC_SAE_TRAIN"  # jaxcirc.sae._checkpoint
_MARKERS = {MARKER: "transformer", _SAE_MARKER: "sae", _TRAIN_MARKER: "sae training run"}
_SCALARS = (type(None), bool, int, float, str)


def kind_for(obj) -> str:
    """The kind `jaxcirc.save` stores `obj` as; a `TypeError` naming the kinds otherwise."""
    from ..sae import SAE

    for kind, cls in (("transformer", Transformer), ("mlp_classifier", MLPClassifier),
                      ("sae", SAE), ("circuit", Circuit), ("mask", dict)):  # fmt: skip
        if isinstance(obj, cls):
            return kind
    raise TypeError(
        f"jaxcirc.save stores a Transformer, an MLPClassifier, an SAE, a Circuit or a mask (a "
        f"dict of arrays); got a {type(obj).__name__}"
    )


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}{nearest(str(kind), KINDS)}; kinds: {list(KINDS)}")
    return kind


def holds_saved(path: Path) -> bool:
    """Whether the directory `path` holds the header of an object jaxcirc saved."""
    return any((path / name).is_file() for name in (*_MARKERS, HEADER))


def kind_of(path: Path) -> str | None:
    """The kind saved in the directory `path`; `None` where jaxcirc saved nothing there."""
    for marker, kind in _MARKERS.items():
        if (path / marker).is_file():
            return kind
    if (path / HEADER).is_file():
        return _header(path)["kind"]
    return None


# ---- tagged JSON ----------------------------------------------------------------------------


def _encode(value, where: str, arrays: dict):
    """`value` as tagged JSON; its arrays go to `arrays` (name -> numpy)."""
    if type(value) in _SCALARS:
        return value
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        name = str(len(arrays))
        arrays[name] = np.asarray(value)
        kind = (
            "jax"
            if isinstance(value, jax.Array)
            else "scalar"
            if isinstance(value, np.generic)
            else "numpy"
        )
        return {"array": name, "type": kind}
    if type(value) in (list, tuple):
        return {type(value).__name__: [_encode(v, f"{where}[{i}]", arrays)
                                       for i, v in enumerate(value)]}  # fmt: skip
    if type(value) is dict:
        bad = [k for k in value if type(k) is not str]
        if bad:
            raise TypeError(
                f"{where} has the key {bad[0]!r} ({type(bad[0]).__name__}); "
                "jaxcirc.save stores dicts with str keys only"
            )
        return {"dict": {k: _encode(v, f"{where}[{k!r}]", arrays) for k, v in value.items()}}
    raise TypeError(
        f"{where} is a {type(value).__name__}, which jaxcirc.save cannot store: it stores None, "
        "bool, int, float, str, arrays, and lists, tuples and str-keyed dicts of these"
    )


def _decode(value, arrays: dict):
    if not isinstance(value, dict):
        return value
    if "array" in value:
        a = arrays[value["array"]]
        return {"jax": jnp.asarray, "numpy": lambda x: x, "scalar": lambda x: x[()]}[value["type"]](
            a
        )
    ((tag, inner),) = value.items()
    if tag == "dict":
        return {k: _decode(v, arrays) for k, v in inner.items()}
    items = [_decode(v, arrays) for v in inner]
    return {"list": list, "tuple": tuple}[tag](items)


# ---- the folder: jaxcirc.json + arrays.bin --------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_data(file: Path, arrays: dict) -> dict:
    """Write `arrays` back to back into `file`; returns their header entries."""
    entries, offset = {}, 0
    with open(file, "wb") as f:
        for name, a in arrays.items():
            data = np.ascontiguousarray(a).tobytes()
            f.write(data)
            entries[name] = {"dtype": a.dtype.name, "shape": list(a.shape), "offset": offset,
                             "sha256": _sha256(data)}  # fmt: skip
            offset += len(data)
        f.flush()
        os.fsync(f.fileno())
    return entries


def _save_folder(path, kind: str, value) -> Path:
    arrays: dict = {}
    fields = _encode(value, kind, arrays)

    def fill(tmp: Path) -> None:
        entries = _write_data(tmp / DATA, arrays)
        header = {"kind": kind, "format": FORMAT, "fields": fields, "arrays": entries}
        _fsync_write(tmp / HEADER, json.dumps(header, indent=1) + "\n")  # complete

    return replace_dir(path, fill, lambda p: (p / HEADER).is_file(), f"a saved {kind}")


def _corrupt(path: Path, why: str) -> ValueError:
    return ValueError(
        f"{path / HEADER} is corrupt: {why}; the saved object cannot be trusted: save it again"
    )


def _header(path: Path) -> dict:
    try:
        header = json.loads((path / HEADER).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _corrupt(path, f"{type(e).__name__}: {e}") from None
    if not isinstance(header, dict):
        raise _corrupt(path, f"it holds a {type(header).__name__}, not a JSON object")
    if header.get("format") != FORMAT:
        raise ValueError(
            f"{path / HEADER} has format {header.get('format')!r}; this version of "
            f"jaxcirc reads format {FORMAT}"
        )
    kind = header.get("kind")
    if kind not in KINDS:
        raise _corrupt(path, f"unknown kind {kind!r}{nearest(str(kind), KINDS)}")
    entries = header.get("arrays")
    if (
        not isinstance(entries, dict)
        or not all(
            isinstance(e, dict)
            and isinstance(e.get("dtype"), str)
            and isinstance(e.get("sha256"), str)
            and type(e.get("offset")) is int
            and e["offset"] >= 0
            and isinstance(e.get("shape"), list)
            and all(type(n) is int and n >= 0 for n in e["shape"])
            for e in entries.values()
        )
        or "fields" not in header
    ):
        raise _corrupt(
            path, "expected 'fields' and 'arrays' (name -> dtype, shape, offset, sha256)"
        )
    return header


def _read_data(path: Path, entries: dict) -> dict:
    file = path / DATA
    try:
        data = file.read_bytes()
    except OSError as e:
        raise ValueError(
            f"cannot read {file} ({type(e).__name__}: {e}); save the object again"
        ) from None
    arrays, end = {}, 0
    for name, e in entries.items():
        try:
            dtype = jnp.dtype(e["dtype"])
        except TypeError:
            raise _corrupt(path, f"array {name} has the unknown dtype {e['dtype']!r}") from None
        size = math.prod(e["shape"]) * dtype.itemsize
        chunk = data[e["offset"] : e["offset"] + size]
        if len(chunk) != size or _sha256(chunk) != e["sha256"]:
            raise ValueError(
                f"{file}: array {name} ({e['dtype']}{e['shape']}) differs from the "
                "one saved (truncated, or SHA-256 mismatch): the file is corrupt; "
                "save the object again"
            )
        arrays[name] = np.frombuffer(chunk, dtype).reshape(e["shape"]).copy()
        end = max(end, e["offset"] + size)
    if end != len(data):
        raise ValueError(
            f"{file} holds {len(data)} bytes; its header describes {end}: the file "
            "is corrupt; save the object again"
        )
    return arrays


# ---- each kind ------------------------------------------------------------------------------


def _mlp_fields(model: MLPClassifier) -> dict:
    reps = model.replacements
    other = [s.name for s, r in zip(model.hidden, reps) if s.intervention is not None and r is None]
    if other:
        raise ValueError(
            f"this MLPClassifier carries interventions at {other}; jaxcirc.save "
            "stores only Replacements (jaxcirc.methods.replace): save "
            "`jaxcirc.clear(model)` instead"
        )
    return {
        "weights": model.weights, "biases": model.biases,
        "replacements": tuple(None if r is None else {f.name: getattr(r, f.name) for f in
                                                      dataclasses.fields(r)} for r in reps),
    }  # fmt: skip


def _mlp(fields: dict) -> MLPClassifier:
    reps = [None if r is None else Replacement(**r) for r in fields["replacements"]]
    return MLPClassifier(fields["weights"], fields["biases"], reps)


def _graph_fields(g) -> dict:
    def plain(v):
        if isinstance(v, Node):
            return dataclasses.asdict(v)
        return tuple(map(plain, v)) if isinstance(v, tuple) else v

    return {"type": type(g).__name__,
            **{f.name: plain(getattr(g, f.name)) for f in dataclasses.fields(g)}}  # fmt: skip


def _graph(fields: dict):
    def nodes(v):
        if isinstance(v, dict):
            return Node(**v)
        return tuple(map(nodes, v)) if isinstance(v, tuple) else v

    graphs = {"Graph": Graph, "FeatureGraph": FeatureGraph}
    cls = graphs[fields.pop("type")]
    return cls(**{k: nodes(v) for k, v in fields.items()})


def _circuit_fields(c: Circuit) -> dict:
    scores = None if c.scores is None else {"values": c.scores.values, "signed": c.scores.signed}
    return {"graph": _graph_fields(c.graph), "mask": c.mask, "scores": scores, "info": c.info}


def _circuit(fields: dict) -> Circuit:
    g = _graph(fields["graph"])
    s = fields["scores"]
    scores = None if s is None else Scores(s["values"], g, s["signed"])
    return Circuit(fields["mask"], g, scores, fields["info"])


_FOLDERS = {  # kind -> (object -> fields, fields -> object)
    "mlp_classifier": (_mlp_fields, _mlp),
    "circuit": (_circuit_fields, _circuit),
    "mask": (lambda d: d, lambda d: d),
}


def save_object(path, obj) -> Path:
    """Save `obj` (any kind) atomically to the folder `path`; see the module docstring."""
    kind = kind_for(obj)
    path = Path(path).expanduser()
    if path.is_dir() and not path.is_symlink():
        try:
            found = kind_of(path)
        except ValueError:
            found = None  # a corrupt folder of ours: the saver below decides
        if found not in (None, kind):
            raise FileExistsError(
                f"{path} holds a saved {found}; refusing to replace it with a "
                f"{kind}: choose another path, or delete it yourself"
            )
    if kind == "transformer":
        save_checkpoint(path, obj)
        return path
    if kind == "sae":
        from ..sae import save

        return save(path, obj)
    return _save_folder(path, kind, _FOLDERS[kind][0](obj))


def load_object(path: Path, found: str, **kwargs):
    """The object of kind `found` saved in the folder `path`; `kwargs` go to its reader
    (`transformer`: `dtype`, `allow_nonfinite`; `sae`: `architecture`, `d_in`, `d_sae`)."""
    if found == "transformer":
        return load_checkpoint(path, **kwargs)
    if found == "sae":
        from ..sae import load

        return load(path, **kwargs)
    if found not in _FOLDERS:
        raise ValueError(
            f"{path} holds an SAE training run ({_TRAIN_MARKER}), which jaxcirc.load "
            "does not read: resume it with jaxcirc.sae.train(..., checkpoint=path)"
        )
    if kwargs:
        raise TypeError(f"loading a saved {found} takes no keyword arguments; got {sorted(kwargs)}")
    header = _header(path)
    arrays = _read_data(path, header["arrays"])
    try:
        return _FOLDERS[found][1](_decode(header["fields"], arrays))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise _corrupt(path, f"its fields do not make a {found} ({type(e).__name__}: {e})") from e
