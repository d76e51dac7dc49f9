"""`jaxcirc.save` / `jaxcirc.load` for every kind: exact round trips (fields and outputs), atomic
overwrites (an interrupted write keeps the previous folder), wrong kinds and corrupt files."""

import json
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_checkpoint import make

import jaxcirc as jc
from jaxcirc.graph import Circuit, FeatureGraph, Scores, graph
from jaxcirc.io import _checkpoint, _saved
from jaxcirc.models import MLPClassifier, Replacement, narrow

TOKENS = jnp.asarray([[1, 5, 7, 2, 22, 0], [3, 3, 9, 19, 1, 2]])
X = jnp.asarray(np.random.default_rng(1).standard_normal((3, 6)), jnp.float32)
SITE = "blocks.0.hook_resid_post"


def mlp(seed=0):
    rng = np.random.default_rng(seed)
    widths = (6, 5, 4, 3)
    return MLPClassifier([rng.standard_normal((o, i)) for i, o in zip(widths, widths[1:])],
                         [rng.standard_normal(o) for o in widths[1:]])  # fmt: skip


def hidden0(seed=0):
    rng = np.random.default_rng(seed)
    return Replacement.constants("hidden.0", np.array([1, 0, 1, 1, 0], bool),
                                 rng.standard_normal(5))  # fmt: skip


def transformer_abstraction():
    keep = np.arange(32) % 3 != 0
    rep = Replacement.constants("blocks.1.mlp.hook_post", keep, np.linspace(-1, 1, 32))
    return narrow(make("gpt2"), rep)


def edge_circuit(seed=0):
    g = graph(make("attn_only"))
    values = jnp.asarray(np.random.default_rng(seed).standard_normal(g.valid.shape), jnp.float32)
    c = Scores.from_effects(values, g).top(5)
    info = {
        "divergence": 0.125,
        "n_tested": 7,
        "losses": jnp.arange(3.0),
        "tag": "eap",
        "pair": (1, "two", None),
        "scalar": np.float32(0.5),
        "nested": {"ok": [True, 2]},
    }
    return Circuit(c.mask, g, c.scores, info)


def feature_circuit():
    g = FeatureGraph.of([(SITE, 1, 3), (SITE, 1, None), ("blocks.1.hook_resid_post", 2, 0)])
    return Scores(jnp.asarray([0.5, 0.0, 2.0]), g).above(0.1)


OBJECTS = {  # name -> (kind, build)
    "transformer": ("transformer", lambda: make("llama")),
    "transformer_abstraction": ("transformer", transformer_abstraction),
    "mlp_classifier": ("mlp_classifier", mlp),
    "mlp_masked": (
        "mlp_classifier",
        lambda: MLPClassifier(mlp().weights, mlp().biases, [hidden0(), None]),
    ),
    "mlp_abstraction": ("mlp_classifier", lambda: narrow(mlp(), hidden0())),
    "sae": ("sae", lambda: jc.sae.init("topk", 16, 24, k=3, key=jax.random.key(0), site=SITE)),
    "circuit": ("circuit", edge_circuit),
    "node_circuit": ("circuit", lambda: edge_circuit().scores.nodes().top(3)),
    "feature_circuit": ("circuit", feature_circuit),
    "mask": (
        "mask",
        lambda: {
            "blocks.0.hook_z": jnp.asarray([True, False]),
            "keep": {"hidden.1": np.arange(4, dtype=np.int8)},
            "scale": jnp.ones((2, 3), jnp.bfloat16),
        },
    ),
}


def assert_same(a, b):
    """Equal trees (static fields included: configs, graphs, sites), leaves of the same type,
    dtype and values, and, for models, the same outputs."""
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        assert type(x) is type(y) or (isinstance(x, jax.Array) and isinstance(y, jax.Array))
        if isinstance(x, (jax.Array, np.ndarray, np.generic)):
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(np.asarray(x, np.float64), np.asarray(y, np.float64))
        else:
            assert x == y
    if isinstance(a, jc.Transformer):
        np.testing.assert_array_equal(jax.vmap(a)(TOKENS), jax.vmap(b)(TOKENS))
    if isinstance(a, MLPClassifier):
        np.testing.assert_array_equal(jax.vmap(a)(X), jax.vmap(b)(X))
    if isinstance(a, Circuit):
        assert a.edges() == b.edges() and a.graph == b.graph


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_round_trip_is_exact(name, tmp_path):
    kind, build = OBJECTS[name]
    obj = build()
    assert jc.save(tmp_path / name, obj) == tmp_path / name
    assert _saved.kind_of(tmp_path / name) == kind
    assert_same(jc.load(tmp_path / name), obj)
    assert_same(jc.load(tmp_path / name, kind=kind), obj)
    assert leftovers(tmp_path) == []


def test_each_folder_has_a_json_header_naming_its_kind_and_format(tmp_path):
    for name in ("transformer", "mlp_classifier", "circuit", "mask"):
        kind, build = OBJECTS[name]
        jc.save(tmp_path / name, build())
        header = _checkpoint.MARKER if kind == "transformer" else _saved.HEADER
        record = json.loads((tmp_path / name / header).read_text())
        assert record["kind"] == kind and isinstance(record["format"], int)
    jc.save(tmp_path / "sae", OBJECTS["sae"][1]())
    assert (tmp_path / "sae" / "JAXCIRC_SAE").is_file()  # the SAE's own format (jaxcirc.sae.save)


def test_a_loaded_circuit_combines_with_one_built_from_the_live_model(tmp_path):
    c = edge_circuit()
    jc.save(tmp_path / "c", c)
    g = graph(make("attn_only"))
    assert jc.load(tmp_path / "c").graph == g
    assert len(jc.load(tmp_path / "c") | Circuit.full(g)) == g.n_edges


# ---- atomicity ------------------------------------------------------------------------------

WRITERS = {  # kind -> (module, name) of the function that writes a folder's arrays
    "transformer": (_checkpoint, "_write_arrays"),
    "sae": ("jaxcirc.sae._checkpoint", "_write_arrays"),
    "mlp_classifier": (_saved, "_write_data"),
    "circuit": (_saved, "_write_data"),
    "mask": (_saved, "_write_data"),
}


@pytest.mark.parametrize("name", ["transformer", "sae", "mlp_classifier", "circuit", "mask"])
def test_an_interrupted_write_leaves_the_old_folder_intact(name, tmp_path, monkeypatch):
    kind, build = OBJECTS[name]
    old = build()
    jc.save(tmp_path / "obj", old)
    module, attr = WRITERS[kind]
    if isinstance(module, str):
        import importlib

        module = importlib.import_module(module)
    write = getattr(module, attr)

    def half_then_crash(target, arrays):
        write(target, arrays)  # the bytes are on disk, the header is not
        raise RuntimeError("killed midway")

    monkeypatch.setattr(module, attr, half_then_crash)
    new = {"mask": lambda: {"other": jnp.zeros(2)}, "circuit": lambda: edge_circuit(seed=1),
           "mlp_classifier": lambda: mlp(seed=1)}.get(name, build)()  # fmt: skip
    with pytest.raises(RuntimeError, match="killed midway"):
        jc.save(tmp_path / "obj", new)
    monkeypatch.undo()
    assert_same(jc.load(tmp_path / "obj"), old)
    assert leftovers(tmp_path) == []


def test_a_swap_killed_between_its_renames_is_undone_by_load(tmp_path):
    path = tmp_path / "mask"
    old = OBJECTS["mask"][1]()
    jc.save(path, old)
    (tmp_path / ".mask.tmp-0123abcd").mkdir()  # the new copy, never moved into place
    os.replace(path, tmp_path / ".mask.old-0123abcd")  # killed between the two renames
    with pytest.warns(UserWarning, match="interrupted; the previous checkpoint was moved back"):
        assert_same(jc.load(path), old)
    assert leftovers(tmp_path) == []
    (tmp_path / ".first.tmp-0123abcd").mkdir()
    with pytest.raises(FileNotFoundError, match="first save to it was interrupted"):
        jc.load(tmp_path / "first")
    assert leftovers(tmp_path) == []


# ---- wrong kinds ----------------------------------------------------------------------------


def test_a_folder_of_another_kind_is_an_error_naming_both_kinds(tmp_path):
    saved = {name: jc.save(tmp_path / name, OBJECTS[name][1]())
             for name in ("transformer", "sae", "circuit", "mask")}  # fmt: skip
    for name, path in saved.items():
        want = "mask" if name != "mask" else "circuit"
        kind = OBJECTS[name][0]
        with pytest.raises(ValueError, match=f"holds a saved {kind}, not a {want}"):
            jc.load(path, kind=want)
    with pytest.raises(
        FileExistsError, match="holds a saved circuit; refusing to replace it with a mask"
    ):
        jc.save(saved["circuit"], OBJECTS["mask"][1]())
    with pytest.raises(FileExistsError, match="holds a saved sae; .* with a transformer"):
        jc.save(saved["sae"], OBJECTS["transformer"][1]())
    assert_same(jc.load(saved["circuit"]), edge_circuit())  # untouched
    with pytest.raises(ValueError, match="unknown kind 'circut' \\(did you mean 'circuit'"):
        jc.load(saved["circuit"], kind="circut")


def test_what_cannot_be_saved_is_named(tmp_path):
    with pytest.raises(TypeError, match="stores a Transformer, .* got a list"):
        jc.save(tmp_path / "x", [jnp.ones(2)])
    c = edge_circuit()
    with pytest.raises(TypeError, match=r"circuit\['info'\]\['effects'\] is a object"):
        jc.save(tmp_path / "x", Circuit(c.mask, c.graph, c.scores, {"effects": object()}))
    with pytest.raises(TypeError, match=r"mask\['a'\] has the key 3 \(int\)"):
        jc.save(tmp_path / "x", {"a": {3: jnp.ones(2)}})
    patched = jc.intervene(mlp(), {"hidden.1": jc.Zero()})
    with pytest.raises(ValueError, match=r"interventions at \['hidden.1'\].*jaxcirc.clear"):
        jc.save(tmp_path / "x", patched)
    assert not (tmp_path / "x").exists() and leftovers(tmp_path) == []


def test_loading_pieces_and_other_files_says_what_to_load(tmp_path):
    jc.save(tmp_path / "c", edge_circuit())
    with pytest.raises(ValueError, match="part of a saved folder: load the folder"):
        jc.load(tmp_path / "c" / _saved.HEADER)
    with pytest.raises(TypeError, match="a saved circuit takes no keyword arguments"):
        jc.load(tmp_path / "c", dtype="bfloat16")
    from jaxcirc.zoo._digits import save as zoo_save

    zoo_save(tmp_path / "abstraction", mlp())  # what `jaxcirc prune` writes for the MLP
    with pytest.raises(FileNotFoundError, match="jaxcirc.zoo.digits_mlp"):
        jc.load(tmp_path / "abstraction")


# ---- corrupt files --------------------------------------------------------------------------


def _edit_header(path, change):
    record = json.loads((path / _saved.HEADER).read_text())
    change(record)
    (path / _saved.HEADER).write_text(json.dumps(record))


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda p: (p / _saved.DATA).write_bytes(b"\1" + (p / _saved.DATA).read_bytes()[1:]),
            "array 0 .* differs from the one saved",
        ),
        (
            lambda p: (p / _saved.DATA).write_bytes((p / _saved.DATA).read_bytes()[:-3]),
            "differs from the one saved \\(truncated",
        ),
        (
            lambda p: (p / _saved.DATA).write_bytes((p / _saved.DATA).read_bytes() + b"\0"),
            "header describes",
        ),
        (
            lambda p: (p / _saved.HEADER).write_text('{"kind": "mask", '),
            "jaxcirc.json is corrupt: JSONDecodeError",
        ),
        (
            lambda p: _edit_header(p, lambda r: r.update(format=9)),
            "has format 9; this version of jaxcirc reads format 1",
        ),
        (
            lambda p: _edit_header(p, lambda r: r.update(kind="circuits")),
            "unknown kind 'circuits' \\(did you mean 'circuit'",
        ),
        (
            lambda p: _edit_header(p, lambda r: r["arrays"]["0"].update(shape=[-1])),
            "expected 'fields' and 'arrays'",
        ),
        (
            lambda p: _edit_header(p, lambda r: r["fields"]["dict"].pop("mask")),
            "fields do not make a circuit \\(KeyError",
        ),
    ],
)
def test_corrupt_files_are_refused_naming_the_file(damage, message, tmp_path):
    path = tmp_path / "c"
    jc.save(path, edge_circuit())
    damage(path)
    with pytest.raises(ValueError, match=message):
        jc.load(path)


def test_saving_over_a_corrupt_folder_of_ours_replaces_it(tmp_path):
    path = tmp_path / "c"
    jc.save(path, edge_circuit())
    (path / _saved.HEADER).write_text("{")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jc.save(path, edge_circuit(seed=2))
    assert_same(jc.load(path), edge_circuit(seed=2))
