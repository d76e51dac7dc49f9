"""Data parallelism for the trainers and the solver (`mesh=`): sharded equals unsharded.

One subprocess with 8 virtual CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=8`,
so the rest of the suite keeps one device) runs every check and prints JSON. On meshes (8,),
(4, 2) and (2, 4) (the batch on the first axis, or on both):

- `jaxcirc.sae.train`: four SAEs at once (TopK at two sites stacked, BatchTopK whose threshold
  is a statistic of the whole batch, ReLU with L1) on a split batch give the unsharded run's
  history and weights;
- `jaxcirc.sparse.train_lm`: a weight-sparse run (top-k masks of the replicated weights);
- `jaxcirc.solvers.lasso`: 13 squared-loss targets (padded to 16 with zero columns) and 8
  logistic ones split over the devices;
- `jaxcirc.methods.circuit_lasso`: the induction model's task circuit, its sub-problems split
  over the devices (each device holds its share of every stack).

The compiled SAE step takes only its device's rows (checked in the HLO).
"""

import json
import re

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

MESHES = {
    "(8,)": ((8,), ("b",), None),
    "(4, 2)": ((4, 2), ("b", "r"), None),
    "(2, 4)": ((2, 4), ("b", "r"), ("b", "r")),
}
BATCH = 64


def _saes():
    import jaxcirc as jc

    keys = jax.random.split(jax.random.key(3), 4)
    return [
        jc.sae.init("topk", 8, 16, k=2, key=keys[0], site="a"),
        jc.sae.init("topk", 8, 16, k=2, key=keys[1], site="b"),
        jc.sae.init("batchtopk", 8, 16, k=3, key=keys[2], site="a"),
        jc.sae.init("relu", 8, 24, key=keys[3], site="a"),
    ]


def _stream(steps, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        a = rng.standard_normal((BATCH, 8)).astype(np.float32)
        yield {"a": a, "b": np.tanh(a) + 0.1 * rng.standard_normal((BATCH, 8)).astype(np.float32)}


def _diff(a, b) -> float:
    pairs = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        for x, y in pairs
    )


def _sae_run(**kw):
    import jaxcirc as jc

    config = jc.sae.TrainConfig(lr=1e-2, warmup_steps=3, dead_tokens=128, log_every=1)
    res = jc.sae.train(_saes(), _stream(12), steps=12, sparsity=[0, 0, 0, 1.0], config=config, **kw)
    losses = [[s["loss"] for s in h["saes"]] for h in res.history]
    weights = [(s.W_enc, s.b_enc, s.W_dec, s.b_dec) for s in res.saes]
    return np.asarray(losses), weights


def _lm_run(**kw):
    from conftest import tiny

    from jaxcirc import sparse

    model = tiny(
        "gpt2", seed=1, n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=20, n_ctx=8
    )
    rows = np.asarray(jax.random.randint(jax.random.key(0), (32, 8), 0, 20))
    trained, history = sparse.train_lm(
        model,
        rows,
        steps=6,
        batch=16,
        lr=1e-2,
        fraction=0.5,
        floor=1,
        anneal=(0.0, 0.5),
        progress=False,
        **kw,
    )
    import equinox as eqx

    return np.asarray(history["loss"]), eqx.filter(trained, eqx.is_inexact_array)


def _lasso_problems():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 30)).astype(np.float32)
    X[:, 1] = X[:, 0] + 0.1 * X[:, 1]  # correlated columns
    W = rng.standard_normal((30, 13)) * (rng.random((30, 13)) < 0.2)
    Y = (X @ W + 0.1 * rng.standard_normal((200, 13))).astype(np.float32)
    labels = (X[:, :8] + 0.5 * rng.standard_normal((200, 8)) > 0).astype(np.float32)
    return X, Y, labels


def _sae_hlo(mesh, batch_axis):
    """The compiled SAE step's parameter shapes of the activations: only the device's rows."""
    import jaxcirc as jc
    from jaxcirc import _mesh
    from jaxcirc.sae._train import Trainer

    config = jc.sae.TrainConfig(lr=1e-2, warmup_steps=3, dead_tokens=128)
    trainer = Trainer(_saes()[:1], steps=2, config=config, mesh=mesh, batch_axis=batch_axis)
    batch = next(_stream(1))
    trainer.update(batch)
    axes = _mesh.check_mesh(mesh, batch_axis)
    x = _mesh.split_along(mesh, axes, batch["a"])
    step = trainer._step_fn
    lowered = step.lower(trainer.members, [x], [trainer.coefs[[0]]], np.int32(1)).lowered
    hlo = lowered.compile().as_text()
    entry = hlo[hlo.index("ENTRY") :].split("\n", 1)[0]
    return re.findall(r"f32\[\d+,8\]", entry)


def _circuit_lasso(**kw):
    """The induction model's task circuit, and for each solve of a stack of sub-problems:
    `(sub-problems in the stack, sub-problems one device holds, devices)`."""
    import jaxcirc as jc
    from jaxcirc.methods import _circuit_lasso as cl

    seen, inner = [], cl._stack_split

    def spy(D, *args):
        seen.append((D.shape[0], D.addressable_shards[0].data.shape[0], len(D.sharding.device_set)))
        return inner(D, *args)

    cl._stack_split = spy
    try:
        fit = jc.methods.circuit_lasso(
            jc.zoo.induction_model(), jc.zoo.induction_task(4, 6), alpha=0.01, **kw
        )
    finally:
        cl._stack_split = inner
    return fit, sorted(set(seen))


def main() -> dict:
    from jaxcirc import solvers

    assert len(jax.devices()) == 8, jax.devices()
    jax.config.update("jax_disable_most_optimizations", True)
    out: dict = {"sae": {}, "lm": {}, "lasso": {}, "hlo": {}, "circuit_lasso": {}}
    cl_ref, _ = _circuit_lasso()
    sae_ref, lm_ref = _sae_run(), _lm_run()
    X, Y, labels = _lasso_problems()
    sq_ref = solvers.lasso(X, Y, 0.05)
    lg_ref = solvers.lasso(X, labels, 0.02, loss="logistic")
    for label, (shape, names, batch_axis) in MESHES.items():
        mesh = Mesh(np.array(jax.devices()).reshape(shape), names)
        kw = dict(mesh=mesh, batch_axis=batch_axis)
        losses, weights = _sae_run(**kw)
        out["sae"][label] = {
            "loss": _diff(losses, sae_ref[0]),
            "weights": _diff(weights, sae_ref[1]),
            "loss scale": float(np.abs(sae_ref[0]).max()),
        }
        losses, params = _lm_run(**kw)
        out["lm"][label] = {
            "loss": _diff(losses, lm_ref[0]),
            "weights": _diff(params, lm_ref[1]),
            "same zeros": bool(
                all(
                    np.array_equal(np.asarray(a) == 0, np.asarray(b) == 0)
                    for a, b in zip(
                        jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(lm_ref[1])
                    )
                )
            ),
        }
        tkw = dict(mesh=mesh, target_axis=batch_axis)
        sq = solvers.lasso(X, Y, 0.05, **tkw)
        lg = solvers.lasso(X, labels, 0.02, loss="logistic", **tkw)
        out["lasso"][label] = {
            "squared": _diff((sq.value, sq.intercept), (sq_ref.value, sq_ref.intercept)),
            "logistic": _diff((lg.value, lg.intercept), (lg_ref.value, lg_ref.intercept)),
            "logistic scale": float(np.abs(np.asarray(lg_ref.value)).max()),
            "shape": list(sq.value.shape),
            "sharded": len(sq.value.sharding.device_set),
        }
        out["hlo"][label] = _sae_hlo(mesh, batch_axis)
        fit, stacks = _circuit_lasso(**tkw)
        out["circuit_lasso"][label] = {
            "scores": _diff(fit.scores.values, cl_ref.scores.values),
            "scale": float(np.nanmax(np.abs(np.asarray(cl_ref.scores.values)))),
            "same circuit": bool(np.array_equal(fit.circuit.mask, cl_ref.circuit.mask)),
            "edges": len(cl_ref.circuit),
            "stacks": stacks,
        }
    mesh = Mesh(np.array(jax.devices()), ("b",))
    errors = {}
    for name, call in {
        "sae batch": lambda: _sae_run(mesh=Mesh(np.array(jax.devices()[:3]), ("b",))),
        "lm batch": lambda: _lm_run(mesh=Mesh(np.array(jax.devices()[:3]), ("b",))),
        "lasso group": lambda: solvers.lasso(X, Y, 0.05, penalty="group_l1", mesh=mesh),
        "lasso axis": lambda: solvers.lasso(X, Y, 0.05, mesh=mesh, target_axis="targets"),
        "circuit_lasso axis": lambda: _circuit_lasso(mesh=mesh, target_axis="bb"),
        "lasso logistic 7": lambda: solvers.lasso(
            X, labels[:, :7], 0.02, loss="logistic", mesh=mesh
        ),
    }.items():
        try:
            call()
            errors[name] = None
        except ValueError as e:
            errors[name] = str(e)
    out["errors"] = errors
    return out


@pytest.fixture(scope="module")
def report():
    from conftest import run_on_devices

    return run_on_devices(__file__, 8)


@pytest.mark.parametrize("mesh", MESHES)
def test_sae_training_sharded_equals_unsharded(report, mesh):
    r = report["sae"][mesh]
    assert r["loss scale"] > 0.1  # a real loss curve
    assert r["loss"] <= 1e-5 * r["loss scale"] and r["weights"] <= 1e-5, r


@pytest.mark.parametrize("mesh", MESHES)
def test_sparse_lm_training_sharded_equals_unsharded(report, mesh):
    r = report["lm"][mesh]
    assert r["loss"] <= 1e-5 and r["weights"] <= 1e-5 and r["same zeros"], r


@pytest.mark.parametrize("mesh", MESHES)
def test_lasso_targets_sharded_equal_unsharded(report, mesh):
    r = report["lasso"][mesh]
    assert r["shape"] == [30, 13]  # padding dropped
    assert r["sharded"] == 8
    # the logistic solve stops at its tolerance, so its coefficients agree to it, relatively
    assert r["squared"] <= 1e-5 and r["logistic"] <= 1e-5 * max(1.0, r["logistic scale"]), r


@pytest.mark.parametrize("mesh", MESHES)
def test_circuit_lasso_sub_problems_sharded_equal_unsharded(report, mesh):
    r = report["circuit_lasso"][mesh]
    assert r["scale"] > 0 and 0 < r["edges"]
    assert r["scores"] <= 1e-5 * r["scale"] and r["same circuit"], r
    n = 8 if mesh != "(4, 2)" else 4  # the sub-problems split over the target axes
    assert r["stacks"], r  # the split solver ran
    for total, here, devices in r["stacks"]:  # padded to a multiple; each device its share
        assert total % n == 0 and here == total // n and devices == 8, r


@pytest.mark.parametrize("mesh", MESHES)
def test_each_device_takes_only_its_rows(report, mesh):
    per_device = {"(8,)": 8, "(4, 2)": 16, "(2, 4)": 8}[mesh]  # 64 rows over the batch axes
    shapes = report["hlo"][mesh]  # the [rows, 8] parameters (the others: [1, 8] SAE biases)
    assert f"f32[{per_device},8]" in shapes and f"f32[{BATCH},8]" not in shapes, shapes
    assert {s for s in shapes if s != "f32[1,8]"} == {f"f32[{per_device},8]"}, shapes


def test_bad_splits_are_refused_with_the_nearest_valid_size(report):
    e = report["errors"]
    assert "batch of 64 does not split evenly over the 3 devices" in e["sae batch"]
    assert "nearest: 63 or 66" in e["sae batch"]
    assert "batch of 16 does not split evenly over the 3 devices" in e["lm batch"]
    assert "nearest: 15 or 18" in e["lm batch"]
    assert "needs penalty='l1'" in e["lasso group"]
    assert "target_axis 'targets' is not an axis of the mesh" in e["lasso axis"]
    assert (
        "target_axis 'bb' is not an axis of the mesh (did you mean 'b'?)" in e["circuit_lasso axis"]
    )
    assert (
        "number of targets of 7 does not split evenly over the 8 devices" in e["lasso logistic 7"]
    )
    assert "(nearest: 8)" in e["lasso logistic 7"]


if __name__ == "__main__":
    print(json.dumps(main()))
