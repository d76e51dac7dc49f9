"""jaxcirc.solvers.unit_curvature: gradient and diagonal curvature w.r.t. unit activations,
checked against `jax.hessian`, the §1.4 closed form for a softmax readout, and each other."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny

import jaxcirc as jc
from jaxcirc.solvers import Curvature, _curvature, unit_curvature

N, D_H, C = 5, 6, 3


@pytest.fixture(scope="module")
def mlp():
    """A 2-layer tanh MLP above the acts: `fn(a) = tanh(tanh(a) @ W1 + b1) @ W2 + b2`."""
    k = jax.random.split(jax.random.key(0), 7)
    params = dict(
        W1=jax.random.normal(k[0], (D_H, D_H)),
        b1=0.1 * jax.random.normal(k[1], (D_H,)),
        W2=jax.random.normal(k[2], (D_H, C)),
        b2=0.1 * jax.random.normal(k[3], (C,)),
    )
    acts = jax.random.normal(k[4], (N, D_H))
    labels = jax.random.randint(k[5], (N,), 0, C)

    def fn(a, x):
        return jnp.tanh(jnp.tanh(a) @ params["W1"] + params["b1"]) @ params["W2"] + params["b2"]

    return fn, acts, labels


def ce(fn, y):
    return lambda a: -jax.nn.log_softmax(fn(a, None))[y]


def hess_diag(f, a):
    return jnp.diag(jax.hessian(f)(a))


@pytest.mark.parametrize("batch_size", [None, 2])
def test_exact_is_hessian_diagonal(mlp, batch_size):
    fn, acts, labels = mlp
    c = unit_curvature(fn, acts, labels=labels, method="exact", batch_size=batch_size)
    assert isinstance(c, Curvature) and c.curv.shape == acts.shape and c.loss.shape == (N,)
    for n in range(N):
        f = ce(fn, labels[n])
        np.testing.assert_allclose(c.curv[n], hess_diag(f, acts[n]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(c.grad[n], jax.grad(f)(acts[n]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(c.loss[n], f(acts[n]), rtol=1e-6)


def test_ggn_linear_readout_is_hessian_and_closed_form():
    """z = a @ W + b per position: GGN = Hessian = (W∘W)ᵀp − (Wᵀp)² (§1.4, W as [C, d]);
    an ignored position (-1) contributes nothing."""
    k = jax.random.split(jax.random.key(1), 4)
    n, seq, d, n_cls = 4, 3, 5, 7
    W = jax.random.normal(k[0], (d, n_cls))
    b = jax.random.normal(k[1], (n_cls,))
    acts = jax.random.normal(k[2], (n, seq, d))
    labels = jax.random.randint(k[3], (n, seq), 0, n_cls).at[1, 2].set(-1)

    def fn(a, x):
        return a @ W + b

    ggn = unit_curvature(fn, acts, labels=labels, method="ggn")
    exact = unit_curvature(fn, acts, labels=labels, method="exact")
    np.testing.assert_allclose(ggn.curv, exact.curv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ggn.grad, exact.grad, rtol=1e-5, atol=1e-6)
    p = jax.nn.softmax(acts @ W + b)
    Wt = W.T  # [C, d]: z = Wt a + b
    closed = p @ (Wt * Wt) - (p @ Wt) ** 2
    closed = closed.at[1, 2].set(0.0)
    np.testing.assert_allclose(ggn.curv, closed, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(ggn.grad[1, 2]) == 0) and float(ggn.curv[1, 2].max()) == 0
    onehot = jax.nn.one_hot(jnp.maximum(labels, 0), n_cls)
    g = ((p - onehot) @ Wt).at[1, 2].set(0.0)  # §1.4: g = Wᵀ(p − y)
    np.testing.assert_allclose(ggn.grad, g, rtol=1e-5, atol=1e-6)


def test_ggn_differs_from_hessian_for_nonlinear_net_and_is_nonnegative(mlp):
    fn, acts, labels = mlp
    ggn = unit_curvature(fn, acts, labels=labels, method="ggn")
    exact = unit_curvature(fn, acts, labels=labels, method="exact")
    assert float(jnp.min(ggn.curv)) >= 0
    assert float(jnp.min(exact.curv)) < 0  # the Hessian is indefinite here, the GGN is not
    assert float(jnp.max(jnp.abs(ggn.curv - exact.curv))) > 0.1
    np.testing.assert_allclose(ggn.grad, exact.grad, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ggn.loss, exact.loss, rtol=1e-6)
    # and it is the per-sample Jᵀ(diag p − ppᵀ)J by jax.jacobian
    for n in range(N):
        J = jax.jacobian(lambda a: fn(a, None))(acts[n])  # [C, d]
        p = jax.nn.softmax(fn(acts[n], None))
        G = J.T @ (jnp.diag(p) - jnp.outer(p, p)) @ J
        np.testing.assert_allclose(ggn.curv[n], jnp.diag(G), rtol=1e-5, atol=1e-6)


def test_hutchinson_and_fisher_converge(mlp):
    fn, acts, labels = mlp
    probes, key = 4000, jax.random.key(3)
    exact = unit_curvature(fn, acts, labels=labels, method="exact")
    hut = unit_curvature(fn, acts, labels=labels, method="hutchinson", probes=probes, key=key)
    err = float(jnp.linalg.norm(hut.curv - exact.curv) / jnp.linalg.norm(exact.curv))
    assert err < 0.03, err
    # each entry within 5 standard errors: Var(v_i (Hv)_i) = Σ_{j≠i} H_ij²
    for n in range(N):
        H = jax.hessian(ce(fn, labels[n]))(acts[n])
        se = jnp.sqrt((jnp.sum(H * H, 1) - jnp.diag(H) ** 2) / probes)
        assert bool(jnp.all(jnp.abs(hut.curv[n] - jnp.diag(H)) <= 5 * se + 1e-6))
    np.testing.assert_allclose(hut.grad, exact.grad, rtol=1e-5, atol=1e-6)

    ggn = unit_curvature(fn, acts, labels=labels, method="ggn")
    fisher = unit_curvature(fn, acts, labels=labels, method="fisher", probes=probes, key=key)
    err = float(jnp.linalg.norm(fisher.curv - ggn.curv) / jnp.linalg.norm(ggn.curv))
    assert err < 0.05, err
    few = unit_curvature(fn, acts, labels=labels, method="fisher", probes=2, key=key)
    assert float(jnp.linalg.norm(few.curv - ggn.curv) / jnp.linalg.norm(ggn.curv)) > err


def test_kl_mode_zero_grad_and_curv_is_ggn(mlp):
    fn, acts, labels = mlp
    kl = unit_curvature(fn, acts, method="exact")  # no labels: loss="kl"
    assert float(jnp.max(jnp.abs(kl.grad))) < 1e-6
    assert float(jnp.max(jnp.abs(kl.loss))) < 1e-6
    ggn = unit_curvature(fn, acts, method="ggn")
    np.testing.assert_allclose(kl.curv, ggn.curv, rtol=1e-4, atol=1e-6)
    # the GGN does not depend on the labels
    ggn_ce = unit_curvature(fn, acts, labels=labels, method="ggn")
    np.testing.assert_allclose(ggn.curv, ggn_ce.curv, rtol=1e-6, atol=1e-7)


class Downstream(eqx.Module):
    """Logits of `model` on `tokens` with each site's activation moved to `a[site]`."""

    model: jc.Transformer

    def __call__(self, a, x):
        tokens, base = x
        moved = jc.intervene(self.model, {s: jc.Add(a[s] - base[s]) for s in a})
        return moved(tokens)


def test_pytree_acts_on_a_transformer():
    """Two sites of a tiny GPT-2, next-token CE: "exact" equals the diagonal blocks of
    `jax.hessian` over the dict, per sample; "hutchinson" in KL mode keeps the structure and
    has zero gradient."""
    model = tiny("gpt2")
    tokens = jax.random.randint(jax.random.key(4), (2, 5), 0, 50)
    sites = ["blocks.0.mlp.hook_post", "blocks.1.hook_resid_mid"]
    acts = {s: jax.vmap(lambda t, s=s: model.run(t)[1][s])(tokens) for s in sites}
    labels = jnp.concatenate([tokens[:, 1:], jnp.full((2, 1), -1)], axis=1)
    fn = Downstream(model)
    c = unit_curvature(fn, acts, (tokens, acts), labels, method="exact")
    assert jax.tree_util.tree_structure(c.curv) == jax.tree_util.tree_structure(acts)

    def f(a, t, base):
        logq = jax.nn.log_softmax(fn(a, (t, base))[:-1])
        return -jnp.take_along_axis(logq, t[1:, None], 1).sum()

    H, g = jax.jit(jax.vmap(lambda *args: (jax.hessian(f)(*args), jax.grad(f)(*args))))(
        acts, tokens, acts
    )
    for s in sites:
        d = acts[s].shape[-1]
        diag = jax.vmap(jnp.diag)(H[s][s].reshape(2, 5 * d, 5 * d)).reshape(2, 5, d)
        np.testing.assert_allclose(c.curv[s], diag, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(c.grad[s], g[s], rtol=1e-4, atol=1e-6)
        assert float(jnp.abs(diag).max()) > 1e-3
    kl = unit_curvature(fn, acts, (tokens, acts), method="hutchinson", key=jax.random.key(0))
    assert {s: x.shape for s, x in kl.curv.items()} == {s: x.shape for s, x in acts.items()}
    assert max(float(jnp.abs(x).max()) for x in kl.grad.values()) < 1e-5


def test_hutchinson_is_the_mean_of_its_probes_at_scale():
    """16 samples × 32 768 units, 8 probes vmapped at once: the estimate equals the mean of
    `v ⊙ Hv` over its own probe vectors, HVP by HVP. (At this size XLA:CPU in jaxlib 0.10.2
    miscompiled the masked sum over the vmapped probes, jax-ml/jax#39103.)"""
    n, d, probes = 16, 32768, 8
    k = jax.random.split(jax.random.key(7), 4)
    c1, c2 = jax.random.normal(k[0], (d,)), jax.random.normal(k[1], (d,)) / d
    acts = jax.random.normal(k[2], (n, d))
    labels = jax.random.randint(k[3], (n,), 0, 2)

    def fn(a, x):
        return jnp.stack([jnp.mean(c1 * jnp.tanh(a)), jnp.sum(c2 * a * a)])

    def total(A):
        logq = jax.nn.log_softmax(jax.vmap(fn)(A, None))
        return -jnp.take_along_axis(logq, labels[:, None], 1).sum()

    key = jax.random.key(8)
    got = unit_curvature(fn, acts, labels=labels, method="hutchinson", probes=probes, key=key)

    @jax.jit
    def one(s):
        V = jax.vmap(lambda i: _curvature.rademacher(key, i, s, d))(jnp.arange(n))
        return V * jax.jvp(jax.grad(total), (acts,), (V,))[1]

    want = sum(one(s) for s in range(probes)) / probes
    np.testing.assert_allclose(got.curv, want, rtol=1e-5, atol=1e-9)


def test_batch_size_does_not_change_random_probes(mlp):
    fn, acts, labels = mlp
    key = jax.random.key(5)
    for method in ("hutchinson", "fisher"):
        whole = unit_curvature(fn, acts, labels=labels, method=method, probes=3, key=key)
        parts = unit_curvature(
            fn, acts, labels=labels, method=method, probes=3, key=key, batch_size=2, progress=True
        )
        np.testing.assert_allclose(whole.curv, parts.curv, rtol=1e-5, atol=1e-5)


def test_compiles_once(mlp, monkeypatch):
    fn, acts, labels = mlp
    counted = eqx.filter_jit(
        eqx.debug.assert_max_traces(_curvature._curvature.__wrapped__, max_traces=1)
    )
    monkeypatch.setattr(_curvature, "_curvature", counted)
    for seed in range(3):
        k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
        a = jax.random.normal(k1, acts.shape)
        y = jax.random.randint(k2, labels.shape, 0, C)
        unit_curvature(fn, a, labels=y, method="hutchinson", probes=4, key=k3)


def test_errors(mlp):
    fn, acts, labels = mlp
    with pytest.raises(ValueError, match="unknown method 'hutchinsn' \\(did you mean 'hutchinson'"):
        unit_curvature(fn, acts, labels=labels, method="hutchinsn")
    with pytest.raises(ValueError, match=r"labels have shape \(5, 2\); expected .* = \(5,\)"):
        unit_curvature(fn, acts, labels=jnp.zeros((N, 2), int))
    with pytest.raises(ValueError, match="label 3 at \\(1,\\) is not a class"):
        unit_curvature(fn, acts, labels=labels.at[1].set(3))
    with pytest.raises(ValueError, match="pass key="):
        unit_curvature(fn, acts, labels=labels, method="hutchinson")
    with pytest.raises(ValueError, match="use method='hutchinson'"):
        unit_curvature(lambda a, x: a[:3], jnp.ones((2, 5000)), method="exact")
    with pytest.raises(ValueError, match="use method='fisher'"):
        unit_curvature(lambda a, x: a, jnp.ones((2, 5000)), method="ggn")
    with pytest.raises(ValueError, match="same leading sample axis"):
        unit_curvature(fn, {"a": acts, "b": acts[:2]})


def test_nonfinite_curvature_names_the_unit():
    """|b|^1.5 has a finite gradient at 0 but an infinite second derivative."""
    k = jax.random.split(jax.random.key(6), 4)
    acts = {"a": jax.random.normal(k[0], (3, 2)), "b": jax.random.normal(k[1], (3, 4))}
    acts["b"] = acts["b"].at[1, 2].set(0.0)
    Wa, Wb = jax.random.normal(k[2], (2, C)), jax.random.normal(k[3], (4, C))

    def fn(a, x):
        return a["a"] @ Wa + jnp.abs(a["b"]) ** 1.5 @ Wb

    with pytest.raises(ValueError, match="non-finite curvature .* unit 2 .* leaf 'b', sample 1"):
        unit_curvature(fn, acts, labels=jnp.zeros(3, int), method="exact")
