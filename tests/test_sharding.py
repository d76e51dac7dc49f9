"""Data parallelism over a device mesh (`jaxcirc._mesh`): sharded equals unsharded.

One subprocess with 8 virtual CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=8`,
so the rest of the suite keeps one device) runs every check and prints JSON; the tests below
read it. On meshes (8,), (4, 2) and (2, 4), with the batch on the first axis or on both, and a
batch of 7 that divides no axis (padded and masked), the patching sweep, causal tracing, edge
patching, EAP, EAP-IG and AtP give their unsharded results to 1e-5. The compiled sharded sweep
holds only its devices' prompts and gathers no activations: its one collective is the
all-reduce of the results (checked in the HLO, with a program that does gather the batch as
the checker's negative control).
"""

import json
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

BATCH, SEQ, VOCAB = 7, 5, 20
SIZES = dict(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=VOCAB, n_ctx=8)
# mesh shape, axis names, batch_axis: the batch on the first axis, or split over both
MESHES = {
    "(8,)": ((8,), ("b",), None),
    "(4, 2)": ((4, 2), ("b", "r"), None),
    "(2, 4)": ((2, 4), ("b", "r"), ("b", "r")),
}
# every engine on the mesh of each kind its sharding code could get wrong, each mesh under
# several engines; the sweep on all three (each sharded run is one compile of about 5 s here)
ENGINES = {
    "sweep resid_pre": ("(8,)", "(4, 2)", "(2, 4)"),
    "sweep z per head": ("(4, 2)",),
    "causal_trace": ("(2, 4)", "(4, 2)"),
    "edge_patching": ("(8,)",),
    "eap_ig activations": ("(4, 2)",),
    "atp mean ablation": ("(2, 4)",),
}
COLLECTIVE = re.compile(
    r"=\s*(\S+)\s+(all-gather|all-to-all|all-reduce|reduce-scatter|collective-permute)"
    r"(?:-start)?\("
)


def collectives(hlo: str) -> list[tuple[str, str]]:
    """`(op, result type)` of every collective in an HLO module's text."""
    return [(op, shape) for shape, op in COLLECTIVE.findall(hlo)]


def gathers_batch(hlo: str, batch: int) -> list[str]:
    """The gathering collectives whose result has a dimension of the full `batch`."""
    bad = []
    for op, shape in collectives(hlo):
        dims = [int(d) for d in re.findall(r"\d+", shape.split("{")[0].split("[", 1)[-1])]
        if op != "all-reduce" and batch in dims:
            bad.append(f"{op} {shape}")
    return bad


# ------------------------------------------------------------------------- the subprocess


def _problem():
    from conftest import tiny

    from jaxcirc.metrics import bind, logit_diff

    model = tiny("gpt2", seed=3, **SIZES)
    clean = jax.random.randint(jax.random.key(1), (BATCH, SEQ), 0, VOCAB)
    corrupt = jax.random.randint(jax.random.key(2), (BATCH, SEQ), 0, VOCAB)
    answer, wrong = jnp.arange(BATCH) % VOCAB, (3 * jnp.arange(BATCH) + 1) % VOCAB
    return model, clean, corrupt, bind(logit_diff, answer=answer, distractor=wrong)


def _engines(model, clean, corrupt, metric):
    """name -> `run(**mesh_kwargs)` returning a pytree of arrays."""
    from jaxcirc import methods
    from jaxcirc.patching import sweep

    mask = jnp.zeros((BATCH, SEQ), bool).at[:, 1:3].set(True)
    answer = jnp.arange(BATCH) % VOCAB
    trace = lambda **kw: methods.causal_trace(
        model, clean, mask, answer, noise_std=0.5, n_samples=2, key=jax.random.key(4),
        kinds=("resid", "attn"), window=2, **kw
    )  # fmt: skip
    signed = lambda f: lambda **kw: f(model, clean, corrupt, metric, **kw).signed
    return {
        "sweep resid_pre": lambda **kw: sweep(model, clean, corrupt, metric, buckets=1, **kw),
        "sweep z per head": lambda **kw: sweep(model, clean, corrupt, metric, "z", "head", **kw),
        "causal_trace": lambda **kw: (lambda r: (r.clean_prob, r.corrupt_prob, r.indirect))(
            trace(**kw)
        ),
        "edge_patching": signed(methods.edge_patching),
        "eap_ig activations": signed(
            lambda *a, **kw: methods.eap_ig(*a, steps=2, variant="activations", **kw)
        ),
        # AtP sums EAP's edge scores: EAP (EAP-IG with one step) with the mean ablation
        "atp mean ablation": signed(lambda *a, **kw: methods.atp(*a, ablation="mean", **kw)),
    }


def _max_diff(a, b) -> float:
    pairs = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in pairs)


def _hlo_of_sweep(model, clean, corrupt, metric, mesh, batch_axis):
    """The optimised compiled HLO of a sharded `resid_pre` sweep, and the shapes of its
    token parameters."""
    from jaxcirc import _mesh
    from jaxcirc.patching import sweep

    jax.config.update("jax_disable_most_optimizations", False)
    try:
        with _mesh.recording() as seen:
            sweep(model, clean, corrupt, metric, buckets=1, mesh=mesh, batch_axis=batch_axis)
        ((run, inputs),) = seen
        hlo = run.lower(*inputs).compile().as_text()
    finally:
        jax.config.update("jax_disable_most_optimizations", True)
    entry = hlo[hlo.index("ENTRY") :].split("\n", 1)[0]
    return hlo, re.findall(r"s32\[\d+,\d+\]", entry)


def _gathering_control(mesh) -> str:
    """HLO of a program that does gather the batch's activations (the checker must see it)."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    x = jax.device_put(jnp.ones((8, SEQ, 16)), NamedSharding(mesh, P("b")))
    f = jax.jit(lambda x: jnp.tanh(x) * 2, out_shardings=NamedSharding(mesh, P()))
    return f.lower(x).compile().as_text()


def main() -> dict:
    """Every check, as JSON-able numbers: run in the subprocess with 8 devices."""
    from jaxcirc import _mesh

    assert len(jax.devices()) == 8, jax.devices()
    jax.config.update("jax_disable_most_optimizations", True)
    begin = time.perf_counter()
    problem = _problem()
    out = {"diffs": {}, "seconds": {}}
    for name, run in _engines(*problem).items():
        start = time.perf_counter()
        reference = run()
        for label in ENGINES[name]:
            shape, names, batch_axis = MESHES[label]
            mesh = Mesh(np.array(jax.devices()).reshape(shape), names)
            out["diffs"][f"{name} on {label}"] = _max_diff(
                run(mesh=mesh, batch_axis=batch_axis), reference
            )
        out["seconds"][name] = time.perf_counter() - start
    # a budget of a few prompts per device: each device runs its prompts in chunks (lax.map)
    model, clean, corrupt, metric = problem
    from jaxcirc.patching import sweep

    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("b", "r"))
    with _mesh.recording() as seen:
        chunked = sweep(model, clean, corrupt, metric, buckets=1, mesh=mesh, memory_budget=1)
    out["chunks per device"] = [seen[0][0].k, seen[0][0].s]
    out["diffs"]["sweep chunked per device on (2, 4)"] = _max_diff(
        chunked, sweep(model, clean, corrupt, metric, buckets=1)
    )
    start, hlo = time.perf_counter(), {}
    for label, (shape, names, batch_axis) in MESHES.items():
        mesh = Mesh(np.array(jax.devices()).reshape(shape), names)
        text, params = _hlo_of_sweep(model, clean, corrupt, metric, mesh, batch_axis)
        hlo[label] = {"collectives": collectives(text), "gathers": gathers_batch(text, 8)}
        hlo[label]["token params"] = params
    out["hlo"] = hlo
    out["seconds"]["hlo"] = time.perf_counter() - start
    control = _gathering_control(Mesh(np.array(jax.devices()), ("b",)))
    out["control gathers"] = gathers_batch(control, 8)
    out["seconds"]["total"] = time.perf_counter() - begin
    return out


@pytest.fixture(scope="module")
def report():
    from conftest import run_on_devices

    return run_on_devices(__file__, 8)


@pytest.mark.parametrize(
    "engine,mesh", [(engine, mesh) for engine, meshes in ENGINES.items() for mesh in meshes]
)
def test_sharded_equals_unsharded(report, engine, mesh):
    assert report["diffs"][f"{engine} on {mesh}"] <= 1e-5


def test_prompts_chunked_within_each_device(report):
    # 7 prompts over 2 devices: 4 each, one at a time under the 1-byte budget
    assert report["chunks per device"] == [4, 1]
    assert report["diffs"]["sweep chunked per device on (2, 4)"] <= 1e-5


@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_sweep_gathers_no_activations(report, mesh):
    hlo = report["hlo"][mesh]
    assert hlo["gathers"] == []
    ops = {op for op, _ in hlo["collectives"]}
    assert ops == {"all-reduce"}, hlo["collectives"]  # the psum of the results, and only it
    # each device's program takes its own prompts: [per device, seq] tokens (and [per device, 1]
    # read positions), never all 7 (or 8 padded)
    per_device = {"(8,)": 1, "(4, 2)": 2, "(2, 4)": 1}[mesh]
    assert f"s32[{per_device},{SEQ}]" in hlo["token params"]
    assert {p.split("[")[1].split(",")[0] for p in hlo["token params"]} == {str(per_device)}


def test_the_hlo_check_sees_a_gather(report):
    assert report["control gathers"], "the checker missed an all-gather of the batch"


# ------------------------------------------------------------------------- in this process


def test_layout_places_every_prompt_once():
    from jaxcirc._mesh import layout

    for batch, n, size in [(7, 8, 5), (10, 4, 3), (9, 4, 2), (16, 2, 16), (1, 8, 1)]:
        rows, valid, k, s = layout(batch, n, size)
        assert rows.shape == valid.shape == (n * k * s,) and s <= size
        # an independent count: every prompt appears exactly once among the valid slots
        assert np.array_equal(np.bincount(rows[valid], minlength=batch), np.ones(batch, int))
        # device d holds prompts d·⌈batch/n⌉ on, in order
        per = -(-batch // n)
        for d, (r, v) in enumerate(zip(rows.reshape(n, -1), valid.reshape(n, -1))):
            assert list(r[v]) == list(range(d * per, min((d + 1) * per, batch)))


def test_bad_mesh_arguments():
    from jaxcirc import _mesh
    from jaxcirc.metrics import logit_diff as raw_logit_diff
    from jaxcirc.patching import sweep

    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("batch", "model"))
    assert _mesh.check_mesh(mesh) == ("batch",)
    assert _mesh.check_mesh(mesh, ("model", "batch")) == ("model", "batch")
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh.*got tuple"):
        _mesh.check_mesh((8,))
    with pytest.raises(ValueError, match="'btach' is not an axis.*did you mean 'batch'"):
        _mesh.check_mesh(mesh, "btach")
    with pytest.raises(ValueError, match="distinct names"):
        _mesh.check_mesh(mesh, ("batch", "batch"))
    model, clean, corrupt, _ = _problem()
    whole = lambda logits: raw_logit_diff(logits, 3, 7)  # no per-example form
    with pytest.raises(ValueError, match="sweep with mesh= .* per-example form"):
        sweep(model, clean, corrupt, whole, mesh=mesh)


if __name__ == "__main__":
    print(json.dumps(main()))
