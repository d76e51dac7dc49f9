"""Interventional-risk pruning on arrays (Asiaee 2026, arXiv 2602.24266):
closed forms against brute force, the second-order prediction against measured losses, the
constructed case where variance pruning fails, damping, compile-once and bad inputs."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcirc.methods import _risk_pruning as rp
from jaxcirc.models._replacement import CONSTANT, FOLD


def ce(a, y, W2, b2):
    """Cross-entropy of the readout `softmax(W2 a + b2)` on one example."""
    return -jax.nn.log_softmax(W2 @ a + b2)[y]


@jax.jit
def grads(a, y, W2, b2):
    """Exact per-sample gradient and Hessian diagonal of `ce` with respect to `a` `[n, u]`."""
    g = jax.vmap(jax.grad(ce), (0, 0, None, None))(a, y, W2, b2)
    hess = jax.vmap(jax.hessian(ce), (0, 0, None, None))(a, y, W2, b2)
    return g, jnp.diagonal(hess, axis1=1, axis2=2)


@jax.jit
def _mean_ce(a, y, W2, b2):
    return jax.vmap(ce, (0, 0, None, None))(a, y, W2, b2).mean()


def mean_ce(a, y, W2, b2):
    return float(_mean_ce(a, y, W2, b2))


def mlp(seed, d_in, u, c):
    rng = np.random.default_rng(seed)
    return rng, rng.normal(size=(u, d_in)), rng.normal(size=u) * 0.5, rng.normal(size=(c, u))


def test_uniform_curvature_and_zero_gradient_is_variance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 10, 3)) * rng.uniform(0.1, 3.0, size=(1, 10, 3)) + 2.0
    g, h = np.zeros_like(a), np.full_like(a, 0.7)
    var, mean = rp.variance_scores(a)
    for kw in ({"damping": None, "clip": False}, {}):
        score, c = rp.constant_scores(a, g, h, **kw)
        np.testing.assert_allclose(c, a.mean(0), atol=1e-6)
        np.testing.assert_array_equal(np.argsort(score), np.argsort(var))
        np.testing.assert_allclose(score, 0.5 * 0.7 * a.var(0).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(mean, a.mean(0), atol=1e-6)
    # the same units go: constant pruning is variance pruning here
    r_c = rp.prune(a, g, h, 0.5, site="s", method="constant")
    r_v = rp.prune(a, g, h, 0.5, site="s", method="variance")
    np.testing.assert_array_equal(r_c.keep, r_v.keep)


def test_second_order_prediction_matches_measured_change():
    rng, W1, b1, W2 = mlp(1, 5, 8, 3)
    W1[2] *= 0.02  # unit 2 is nearly constant: a constant replacement is a small perturbation
    W1[5] = W1[4] + 0.03 * rng.normal(size=5)  # unit 5 nearly copies unit 4: a small fold
    b1[5] = b1[4]
    b2 = rng.normal(size=3)
    x = rng.normal(size=(400, 5))
    a = jnp.tanh(x @ W1.T + b1)
    y = jnp.asarray(rng.integers(0, 3, size=400))
    g, h = grads(a, y, W2, b2)
    base = mean_ce(a, y, W2, b2)

    score, c = rp.constant_scores(a, g, h)
    for j, cj in ((2, c[2, 0]), (2, a[:, 2].mean() + 0.01)):
        measured = mean_ce(a.at[:, 2].set(cj), y, W2, b2) - base
        d = cj - a[:, 2]
        predicted = float((g[:, 2] * d + 0.5 * h[:, 2] * d**2).mean())
        assert abs(measured) > 1e-5
        assert predicted == pytest.approx(measured, rel=0.02)
    measured = mean_ce(a.at[:, 2].set(c[2, 0]), y, W2, b2) - base
    assert float(score[2]) == pytest.approx(measured, rel=0.02)

    keep = np.ones(8, bool)
    keep[5] = False
    f = rp.fold(a, h, keep, g=g, r=3)
    rep = f.replacement("h", keep)
    assert rep.summary() == {"kept": 7, "constant": 0, "fold": 1}
    folded = rep.apply(a[:, :, None])[..., 0]
    np.testing.assert_allclose(folded[:, keep], a[:, keep])
    measured = mean_ce(folded, y, W2, b2) - base
    assert abs(measured) > 1e-6
    assert float(f.score[5]) == pytest.approx(measured, rel=0.05)
    # the fold is far cheaper than a constant for the copied unit
    assert abs(float(f.score[5])) < 0.1 * abs(float(score[5]))


def test_constant_is_the_minimiser_of_the_quadratic_model():
    """Linear softmax readout: the undamped `c*` minimises `Q(c) = Σ g (c − a) + ½ h (c − a)²`
    (a fine grid, evaluated by brute force) and the score is its minimum over n."""
    rng = np.random.default_rng(2)
    a = jnp.asarray(rng.normal(size=(150, 6)))
    W2, b2 = rng.normal(size=(4, 6)), rng.normal(size=4)
    y = jnp.asarray(rng.integers(0, 4, size=150))
    g, h = grads(a, y, W2, b2)
    # for a linear readout the Hessian diagonal is the GGN diagonal (Asiaee 2026)
    p = jax.nn.softmax(a @ W2.T + b2)
    np.testing.assert_allclose(h, p @ (W2 * W2) - (p @ W2) ** 2, atol=1e-5)
    score, c = rp.constant_scores(a, g, h, damping=None, clip=False)
    A, G, Hh = (np.asarray(v, np.float64) for v in (a, g, h))
    for j in range(6):
        grid = np.linspace(A[:, j].min() - 3, A[:, j].max() + 3, 60001)
        d = grid[:, None] - A[None, :, j]
        q = (G[None, :, j] * d + 0.5 * Hh[None, :, j] * d**2).sum(1)
        assert float(c[j, 0]) == pytest.approx(grid[q.argmin()], abs=2 * (grid[1] - grid[0]))
        assert float(score[j]) * 150 == pytest.approx(q.min(), rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("d", [1, 2])
def test_fold_is_weighted_least_squares(d):
    rng = np.random.default_rng(3 + d)
    n, u, r, ridge = 120, 7, 3, 1e-3
    base = rng.normal(size=(n, 3, d))
    a = np.concatenate(
        [
            base,
            base @ rng.normal(size=(d, d)) + 0.3 * rng.normal(size=(n, 3, d)),
            rng.normal(size=(n, 1, d)),
        ],
        axis=1,
    )[:, :u]
    a = a + 0.5 * rng.normal(size=(1, u, d))
    h = rng.uniform(0.05, 2.0, size=a.shape)
    h[:, 6, 0] = -1.0  # negative curvature: weights floor at 1e-8 for the regression
    keep = np.array([1, 1, 0, 1, 0, 1, 0], bool)
    f = rp.fold(a, h, keep, r=r, ridge=ridge)
    mix, offset = np.asarray(f.mix, np.float64), np.asarray(f.offset, np.float64)
    flat = a.reshape(n, u * d)
    for j in np.flatnonzero(~keep):
        # parents: the r kept units with the largest |corr| over coordinate pairs
        cand = [k for k in np.flatnonzero(keep) if k != j]
        strength = [
            max(
                abs(np.corrcoef(a[:, j, e], a[:, k, e2])[0, 1]) for e in range(d) for e2 in range(d)
            )
            for k in cand
        ]
        parents = sorted(np.asarray(cand)[np.argsort(strength)[::-1][:r]])
        assert sorted(np.asarray(f.parents[j])) == parents
        X = a[:, parents, :].reshape(n, r * d)
        cols = (np.asarray(parents)[:, None] * d + np.arange(d)).reshape(-1)
        score = 0.0
        for e in range(d):
            w = np.maximum(h[:, j, e], 1e-8)
            xm = (w[:, None] * X).sum(0) / w.sum()
            gram = ((X - xm) * np.sqrt(w)[:, None]).T @ ((X - xm) * np.sqrt(w)[:, None])
            lam = ridge * np.trace(gram) / X.shape[1]
            lhs = np.vstack(
                [
                    np.sqrt(w)[:, None] * np.c_[np.ones(n), X],
                    np.c_[np.zeros((r * d, 1)), np.sqrt(lam) * np.eye(r * d)],
                ]
            )
            rhs = np.r_[np.sqrt(w) * a[:, j, e], np.zeros(r * d)]
            sol = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
            row = mix[j * d + e]
            np.testing.assert_allclose(row[cols], sol[1:], atol=1e-5, rtol=1e-4)
            np.testing.assert_allclose(np.delete(row, cols), 0.0)
            assert offset[j, e] == pytest.approx(sol[0], abs=1e-5, rel=1e-4)
            resid = sol[0] + X @ sol[1:] - a[:, j, e]
            score += 0.5 * (h[:, j, e] * resid**2).mean()
            np.testing.assert_allclose(offset[j, e] + flat @ row, sol[0] + X @ sol[1:], atol=1e-4)
        assert float(f.score[j]) == pytest.approx(score, rel=1e-3, abs=1e-6)


def iia(full_logits, rep, a_base, a_src, keep, key, p=0.5):
    """Swap each kept unit to the source's value with probability `p`; argmax agreement of the
    full network (pruned units stay at the base values) and the abstraction."""
    swap = jax.random.bernoulli(key, p, a_base.shape) & jnp.asarray(keep)
    mixed = jnp.where(swap, a_src, a_base)
    full = full_logits(mixed).argmax(-1)
    abstract = full_logits(rep.apply(mixed[:, :, None])[..., 0]).argmax(-1)
    return float((full == abstract).mean())


def test_variance_fails_where_curvature_does_not():
    """Unit 0 varies most but nothing reads it; unit 1 varies least and carries the output."""
    rng, W1, b1, _ = mlp(4, 6, 6, 3)
    W1[0] *= 3.0
    W1[1] *= 0.1
    b1[1] = 0.0
    W2 = np.zeros((3, 6))
    W2[:, 1] = [-40.0, 0.0, 40.0]
    W2[:, 2:] = 0.5 * rng.normal(size=(3, 4))  # the rest matter a little
    b2 = np.array([0.0, 2.0, 0.0])
    x = rng.normal(size=(1000, 6))
    a = jnp.tanh(x @ W1.T + b1)
    full_logits = lambda a: a @ W2.T + b2
    y = full_logits(a).argmax(-1)
    g, h = grads(a, y, W2, b2)
    var = np.asarray(rp.variance_scores(a)[0])
    assert var.argmax() == 0 and var.argmin() == 1
    curv = rp.prune(a, g, h, 0.5, site="h", method="constant")
    vbp = rp.prune(a, g, h, 0.5, site="h", method="variance")
    assert curv.keep[1] and not curv.keep[0]
    assert vbp.keep[0] and not vbp.keep[1]
    base, src = a[:500], a[500:]
    key = jax.random.key(0)
    iia_curv = iia(full_logits, curv, base, src, curv.keep, key)
    iia_var = iia(full_logits, vbp, base, src, vbp.keep, key)
    acc = lambda rep: float((full_logits(rep.apply(a[:, :, None])[..., 0]).argmax(-1) == y).mean())
    assert iia_curv > 0.95 and acc(curv) > 0.95  # measured 0.966, 0.977
    assert iia_var < 0.5 and acc(vbp) < 0.5  # measured 0.156, 0.154


def test_damping_prevents_the_collapse():
    """Most units write to the output through tiny weights, so their total curvature is tiny;
    with a few mislabelled calibration rows the undamped Newton step `−G/H` sends their
    constants far outside anything the unit produces, and the pruned network collapses."""
    rng, W1, b1, W2 = mlp(1, 8, 32, 4)
    W2[:, 8:] *= 1e-3
    W2 *= 5.0
    b2 = np.zeros(4)
    logits = lambda a: a @ W2.T + b2
    x = rng.normal(size=(400, 8))
    a = jnp.tanh(x @ W1.T + b1)
    y = np.asarray(logits(a).argmax(-1))
    flip = rng.random(400) < 0.05
    y = jnp.asarray(np.where(flip, (y + rng.integers(1, 4, 400)) % 4, y))
    g, h = grads(a, y, W2, b2)
    H = np.asarray(h.sum(0))
    assert np.median(H[8:]) < 1e-3 * np.median(H[:8])
    _, c_raw = rp.constant_scores(a, g, h, damping=None, clip=False)
    assert float(jnp.abs(c_raw).max()) > 50.0  # tanh units live in [-1, 1]
    x_test = rng.normal(size=(2000, 8))
    a_test = jnp.tanh(x_test @ W1.T + b1)
    truth = logits(a_test).argmax(-1)

    def accuracy(**kw):
        rep = rp.prune(a, g, h, 0.25, site="h", **kw)
        return float((logits(rep.apply(a_test[:, :, None])[..., 0]).argmax(-1) == truth).mean())

    undamped = accuracy(method="constant", damping=None, clip=False)
    damped = accuracy(method="constant")
    variance = accuracy(method="variance")
    assert undamped < 0.6 and undamped < variance
    assert damped > 0.95 and damped >= variance


def test_iterative_fold_keeps_one_of_each_copy():
    """Units come in near-copies; iterative folding removes one of each pair and folds it onto
    its twin; every pruned unit reads kept units only."""
    rng = np.random.default_rng(5)
    z = rng.normal(size=(300, 4))
    a = np.concatenate(
        [z, z @ np.diag([1.0, -2.0, 0.5, 3.0]) + 0.01 * rng.normal(size=(300, 4))], axis=1
    )
    a = a + rng.normal(size=(1, 8))
    h = np.ones_like(a)
    g = 0.01 * rng.normal(size=a.shape)
    rep = rp.prune(a, g, h, 0.5, site="h", method="fold", schedule="iterative", block=1, r=2)
    keep = np.asarray(rep.keep)
    assert (keep[:4] ^ keep[4:]).all()
    assert (np.asarray(rep.kind)[~keep] == FOLD).all()
    mix = np.asarray(rep.mix)
    assert not mix[keep].any() and not mix[:, ~keep].any()
    np.testing.assert_allclose(rep.apply(a[:, :, None])[..., 0], a, atol=0.1)
    # auto: the same pairs, plus a nearly constant unit with a gradient, which gets a constant
    a2 = np.concatenate([a, 5.0 + 1e-3 * rng.normal(size=(300, 1))], axis=1)
    h2, g2 = np.ones_like(a2), np.zeros_like(a2)
    g2[:, 8] = 0.05  # the Newton-shifted constant beats a fold, which ignores the gradient
    auto = rp.prune(a2, g2, h2, 4 / 9, site="h", method="auto", schedule="iterative", r=2)
    assert not auto.keep[8] and int(auto.kind[8]) == CONSTANT
    assert (np.asarray(auto.keep[:4]) ^ np.asarray(auto.keep[4:8])).all()
    # rescore: called once between blocks with the current replacement; the same arrays give
    # the same answer as rescore=None
    seen = []

    def rescore(replacement):
        seen.append(replacement.n_kept)
        return a, g, h

    again = rp.prune(
        a, g, h, 0.5, site="h", method="fold", schedule="iterative", block=1, r=2, rescore=rescore
    )
    assert seen == [7, 6, 5]
    np.testing.assert_allclose(again.mix, rep.mix, atol=1e-6)
    # three copies of one signal, two removed one at a time: the first fold reads the second
    # copy, which is removed next, so its row is rewritten onto the last copy
    z1, w = rng.normal(size=(300, 1)), rng.normal(size=(300, 2))
    a3 = np.c_[z1, 2 * z1, -z1 + 1, w] + 1e-3 * rng.normal(size=(300, 5))
    chain = rp.prune(
        a3,
        np.zeros_like(a3),
        np.ones_like(a3),
        0.6,
        site="h",
        method="fold",
        schedule="iterative",
        block=1,
        r=2,
    )
    keep3 = np.asarray(chain.keep)
    assert keep3[:3].sum() == 1 and keep3[3:].all()
    assert not np.asarray(chain.mix)[:, ~keep3].any()
    np.testing.assert_allclose(chain.apply(a3[:, :, None])[..., 0], a3, atol=0.02)
    # without rescore, iterative constant pruning is one-shot constant pruning
    it = rp.prune(a, g, h, 0.5, site="h", method="constant", schedule="iterative", block=1)
    one = rp.prune(a, g, h, 0.5, site="h", method="constant")
    np.testing.assert_array_equal(it.keep, one.keep)
    np.testing.assert_allclose(it.offset, one.offset, atol=1e-6)
    # one-shot fold: the constant ranking chooses, a fold replaces
    one = rp.prune(a, g, h, 0.5, site="h", method="fold")
    assert (np.asarray(one.kind)[~np.asarray(one.keep)] == FOLD).all()


def test_compiles_once(monkeypatch):
    const = eqx.filter_jit(eqx.debug.assert_max_traces(rp._constant_core.__wrapped__, max_traces=1))
    folded = eqx.filter_jit(eqx.debug.assert_max_traces(rp._fold_core.__wrapped__, max_traces=1))
    monkeypatch.setattr(rp, "_constant_core", const)
    monkeypatch.setattr(rp, "_fold_core", folded)
    rng = np.random.default_rng(6)
    for seed, kf in ((0, 0.5), (1, 0.25)):
        a, g, h = (np.random.default_rng(seed + i).normal(size=(50, 10, 2)) for i in range(3))
        rp.constant_scores(a, g, h, damping=0.5 + seed)
        rp.fold(a, np.abs(h), rng.random(10) < 0.5, r=3)
        rp.prune(a, g, np.abs(h), kf, site="h", method="auto", r=3)
    assert eqx.debug.get_num_traces(const) == 1
    assert eqx.debug.get_num_traces(folded) == 1


def test_bad_inputs_are_named():
    rng = np.random.default_rng(7)
    a, g, h = (rng.normal(size=(20, 6)) for _ in range(3))
    with pytest.raises(ValueError, match=r"keep_fraction must be in \(0, 1\]; got 0"):
        rp.prune(a, g, h, 0, site="h")
    with pytest.raises(ValueError, match=r"keep_fraction must be in \(0, 1\]; got 1.5"):
        rp.prune(a, g, h, 1.5, site="h")
    with pytest.raises(ValueError, match="unknown method 'constnat'.*did you mean 'constant'"):
        rp.prune(a, g, h, 0.5, site="h", method="constnat")
    with pytest.raises(ValueError, match="unknown schedule 'iterativ'.*did you mean 'iterative'"):
        rp.prune(a, g, h, 0.5, site="h", schedule="iterativ")
    with pytest.raises(ValueError, match=r"g has shape \(20, 5, 1\).*\(20, 6, 1\)"):
        rp.constant_scores(a, g[:, :5], h)
    with pytest.raises(ValueError, match="h is not finite at unit 3 \\(sample 4"):
        rp.prune(a, g, _nan(h, 4, 3), 0.5, site="h")
    with pytest.raises(ValueError, match=r"r \* d_unit \+ 1 = 6 calibration rows.*got n = 5"):
        rp.prune(a[:5], g[:5], h[:5], 0.5, site="h", method="fold")
    with pytest.raises(ValueError, match=r"r \* d_unit \+ 1 = 13 calibration rows.*got n = 12"):
        rp.fold(rng.normal(size=(12, 5, 3)), np.ones((12, 5, 3)), np.ones(5, bool), r=4)
    with pytest.raises(ValueError, match="keep must have shape"):
        rp.fold(a, h, np.ones(5, bool), r=2)
    with pytest.raises(ValueError, match="needs key="):
        rp.prune(a, g, h, 0.5, site="h", method="random")
    rand = rp.prune(a, g, h, 0.5, site="h", method="random", key=jax.random.key(0))
    assert rand.n_kept == 3


def _nan(x, i, j):
    x = np.array(x)
    x[i, j] = np.nan
    return x
