"""CircuitLasso's task circuit (Yin et al. 2026, arXiv 2606.16939, §3.3): on the shipped
induction models it finds the induction circuit, as faithful as EAP-IG's circuit of its size;
the head split and the readout against independent references; bad inputs named."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcirc.methods._task_circuit as tc
from jaxcirc import zoo
from jaxcirc.graph import graph
from jaxcirc.methods import discover
from jaxcirc.methods._circuit_lasso import CircuitLasso, circuit_lasso
from jaxcirc.methods._edge_attribution import eap_ig, edge_patching
from jaxcirc.metrics import faithfulness
from jaxcirc.tasks import Task


def _names(scores, k):
    g = scores.graph
    v = np.where(g.valid, np.asarray(scores.values), -np.inf)
    top = np.argsort(-v.ravel(), kind="stable")[:k]
    return [f"{g.sources[i // g.n_targets]}->{g.targets[i % g.n_targets]}" for i in top]


def _case(model, reference):
    """The task circuit with defaults, EAP-IG's circuit of its size and both faithfulnesses."""
    task = zoo.induction_task(16, 8, seed=1)
    res = circuit_lasso(model, task.clean, task.corrupt, task.metric)
    size = int(np.asarray(res.circuit.mask).sum())
    ig = eap_ig(model, task.clean, task.corrupt, task.metric)
    ours, theirs = np.asarray(
        faithfulness(model, task.clean, task.corrupt, task.metric, [res.circuit, ig.top(size)])
    )
    ref = reference(model, task.clean, task.corrupt, task.metric) if reference else None
    return res, size, float(ours), float(theirs), ref


@pytest.fixture(scope="module")
def attn_only():
    return _case(zoo.induction_model(), None)


@pytest.fixture(scope="module")
def with_mlps():
    return _case(zoo.induction_mlp_model(), edge_patching)


@pytest.mark.parametrize("case", ["attn_only", "with_mlps"])
def test_task_circuit_is_small_and_as_faithful_as_eap_ig(case, request):
    res, size, ours, theirs, _ = request.getfixturevalue(case)
    g = res.scores.graph
    assert 0 < size <= g.n_edges // 2, size
    assert abs(ours - theirs) <= 0.1, (size, ours, theirs)
    # the circuit is the edges above the mean relevance: it outscores every edge left out
    v, mask = np.asarray(res.scores.values), np.asarray(res.circuit.mask)
    assert v[mask].min() > v[g.valid & ~mask].max()


def test_attn_only_finds_the_induction_circuit(attn_only):
    res, size, *_ = attn_only
    top = _names(res.scores, 10)
    assert any(e.startswith("L0H2->L1H") and e.endswith(".k") for e in top[:5]), top
    # the induction heads (the EAP ranking's L1H0 and L1H2) write to the logits
    assert {"L1H0->logits", "L1H2->logits"} <= set(top[:5]), top
    # and queries of the second layer, which the corruption leaves unchanged, are not in it
    assert not any(e.endswith(".q") for e in top), top


def test_mlp_model_top_edges_agree_with_edge_patching(with_mlps):
    res, *_, patched = with_mlps
    ours, exact = set(_names(res.scores, 10)), set(_names(patched, 10))
    assert len(ours & exact) >= 5, (sorted(ours), sorted(exact))


def test_skeleton_without_a_metric_and_on_request():
    """No metric, or `target="skeleton"`: the plain skeleton; a Task gives the task circuit."""
    model = zoo.induction_model()
    task = zoo.induction_task(4, 4, seed=2)
    kw = dict(alpha=0.05, rank=2, target_rank=2)
    plain = circuit_lasso(model, task.clean, task.corrupt, **kw)
    asked = circuit_lasso(model, task.clean, task.corrupt, task.metric, target="skeleton", **kw)
    assert plain.behaviour is None and asked.behaviour is None
    np.testing.assert_array_equal(plain.scores.values, asked.scores.values)
    as_task = Task(
        task.clean, task.corrupt, task.clean[:, -1], task.corrupt[:, -1], task.metric, {},
        (), (), (),
    )  # fmt: skip
    a = circuit_lasso(model, as_task, **kw)
    b = circuit_lasso(model, task.clean, task.corrupt, task.metric, **kw)
    assert isinstance(a.behaviour, tc.Behaviour)
    np.testing.assert_allclose(np.asarray(a.scores.values), np.asarray(b.scores.values))
    found = discover(CircuitLasso(**kw), model, as_task)
    np.testing.assert_array_equal(np.asarray(found.mask), np.asarray(a.circuit.mask))
    top = circuit_lasso(model, as_task, n_edges=3, **kw).circuit
    assert int(np.asarray(top.mask).sum()) == 3


def test_readout_is_the_models_own_final_stream():
    """`x` (sources plus biases) unembeds to the model's logits, and `∂y/∂x` agrees with a
    finite difference of the metric along a random direction."""
    model = zoo.induction_mlp_model()
    task = zoo.induction_task(3, 5, seed=4)
    g = graph(model)
    outs, y, grad = _readout_and_check(model, g, task)
    np.testing.assert_allclose(
        np.asarray(y), np.asarray(task.metric.per_example(jax.vmap(model)(task.clean))), rtol=1e-5
    )
    direction = jax.random.normal(jax.random.key(0), grad.shape)
    x = outs.sum(1) + _final_bias(model, g, task.clean)[:, None]
    h = 1e-2
    f = lambda x: task.metric.per_example(jax.vmap(model.logits_at)(x)).sum()
    numeric = (f(x + h * direction) - f(x - h * direction)) / (2 * h)
    assert float(jnp.sum(grad * direction)) == pytest.approx(float(numeric), rel=2e-2)


def _readout_and_check(model, g, task):
    outs, y, grad = tc._readout(model, g, task.clean, task.metric, jnp.arange(3))
    x = outs.sum(1) + _final_bias(model, g, task.clean)[:, None]
    np.testing.assert_allclose(
        np.asarray(jax.vmap(model.logits_at)(x)), np.asarray(jax.vmap(model)(task.clean)),
        atol=2e-4, rtol=1e-4,
    )  # fmt: skip
    return outs, y, grad


@eqx.filter_jit
def _final_bias(model, g, tokens):
    from jaxcirc.graph import graph_states

    return jax.vmap(lambda t: graph_states(model, g, model.embed_tokens(t)[0])[1][-1])(tokens)


def _head_inputs(rng, B=2, T=5, d=3, same_pattern=False, same_values=False):
    q, k, v = (rng.normal(size=(2 * B, T, 1, d)) for _ in range(3))
    P = rng.random((2 * B, 1, T, T)) * np.tril(np.ones((T, T)))
    P /= P.sum(-1, keepdims=True)
    if same_pattern:  # the reference run attends the same way (queries and keys unchanged)
        P[B:], q[B:], k[B:] = P[:B], q[:B], k[:B]
    if same_values:
        v[B:] = v[:B]
    acts = {f"blocks.0.attn.hook_{n}": a for n, a in zip(("q", "k", "v", "pattern"), (q, k, v, P))}
    return {n: a[:B] for n, a in acts.items()}, {n: a[B:] for n, a in acts.items()}


def test_head_split_conserves_and_follows_what_changed():
    rng = np.random.default_rng(0)
    rho = rng.random((2, 5))
    acts, ref = _head_inputs(rng)
    q, k, v, n_kv = tc._head_split(acts, ref, 0, 0, rho)
    assert n_kv == 1
    np.testing.assert_allclose(q.sum() + k.sum() + v.sum(), rho.sum())
    # pattern unchanged: all of it goes to the values, to the rows the head attends to
    acts, ref = _head_inputs(rng, same_pattern=True)
    q, k, v, _ = tc._head_split(acts, ref, 0, 0, rho)
    assert np.abs(q).max() == 0 and np.abs(k).max() == 0
    np.testing.assert_allclose(v.sum(1), rho.sum(1))
    assert v[:, -1].sum() <= rho[:, -1].sum() + 1e-12  # the last key is only seen by itself
    # values unchanged: all of it to the query and the keys, except at the first query, whose
    # one key leaves nothing to change (no change, no relevance passed on)
    acts, ref = _head_inputs(rng, same_values=True)
    q, k, v, _ = tc._head_split(acts, ref, 0, 0, rho)
    assert np.abs(v).max() == 0
    np.testing.assert_allclose(q.sum() + k.sum(), rho[:, 1:].sum())


def test_bad_targets_are_named():
    model = zoo.induction_model()
    task = zoo.induction_task(4, 4, seed=2)
    with pytest.raises(ValueError, match=r"unknown target 'tsk' \(did you mean 'task'\?\)"):
        circuit_lasso(model, task.clean, task.corrupt, task.metric, target="tsk")
    with pytest.raises(ValueError, match="target='task' needs the behaviour"):
        circuit_lasso(model, task.clean, task.corrupt, target="task")
    with pytest.raises(ValueError, match="granularity='neurons' has no task circuit"):
        circuit_lasso(
            model, task.clean, task.corrupt, task.metric, target="task", granularity="neurons",
            sites=["blocks.0.hook_resid_pre"],
        )  # fmt: skip

    def mean_logit(logits):  # a metric with no per-example form
        return logits[:, -1, 0].mean()

    with pytest.raises(ValueError, match="has no per_example form"):
        circuit_lasso(model, task.clean, task.corrupt, mean_logit, target="task")
    with pytest.warns(UserWarning, match="returning the dependency skeleton"):
        res = circuit_lasso(model, task.clean, task.corrupt, mean_logit, alpha=0.05, rank=2)
    assert res.behaviour is None


def test_paired_changes_and_reduction_of_a_low_rank_block():
    """A paired task's blocks become `[Δ; −Δ]` (mean zero, so centring keeps them); the
    principal components of a rank-3 block asked for 8 keep its 3 real ones, spanning what
    NumPy's SVD spans, and none of round-off."""
    from jaxcirc.methods._circuit_lasso import _reduce

    rng = np.random.default_rng(0)
    clean, corrupt = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    (both,) = tc.paired_changes([np.concatenate([clean, corrupt])])
    np.testing.assert_array_equal(both, np.concatenate([clean - corrupt, corrupt - clean]))
    assert np.abs(both.mean(0)).max() < 1e-12
    low = rng.normal(size=(120, 3)) @ rng.normal(size=(3, 40))
    (red,) = _reduce([np.concatenate([low, -low])], 8, jax.random.key(0))
    assert red.shape == (240, 3)
    u = np.linalg.svd(np.concatenate([low, -low]), full_matrices=False)[0][:, :3]
    basis = np.linalg.qr(red.astype(np.float64))[0]
    np.testing.assert_allclose(np.abs(np.linalg.svd(u.T @ basis)[1]), 1.0, atol=1e-4)
