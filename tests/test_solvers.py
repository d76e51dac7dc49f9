"""jaxcirc.solvers: FISTA's `lasso` / `lasso_path` against scikit-learn's objectives.

Precision: objective agreement to 1e-6 relative needs float64, so every test that compares
with scikit-learn runs inside `jax.enable_x64(True)` (the `x64` fixture; the flag is restored
afterwards, so other test files keep JAX's float32 default). The compile-once and input-error
tests run in float32.
"""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
from sklearn.linear_model import Lasso, LogisticRegression, MultiTaskLasso  # noqa: E402
from sklearn.linear_model import lasso_path as sk_lasso_path  # noqa: E402

from jaxcirc.solvers import FISTA, RESULTS, lasso, lasso_path  # noqa: E402

TIGHT = FISTA(rtol=1e-11, max_steps=200_000)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def problem(seed, n, d, k, intercept=3.0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) + rng.standard_normal(d)  # non-centred columns
    W = rng.standard_normal((d, k)) * (rng.random((d, k)) < 0.3)
    Y = X @ W + 0.5 * rng.standard_normal((n, k)) + intercept
    return X, Y


def sq_objective(X, Y, W, b, alpha, group=False):
    W = W.reshape(X.shape[1], -1)
    R = Y.reshape(len(X), -1) - X @ W - np.reshape(b, (1, -1))
    pen = np.linalg.norm(W, axis=1).sum() if group else np.abs(W).sum()
    return 0.5 * np.sum(R * R) / len(X) + alpha * pen


def rel(a, b):
    return abs(a - b) / abs(b)


def kkt_violation(X, Y, W, b, alpha):
    """Max violation of the Lasso KKT conditions, with the intercept's optimality too."""
    W = W.reshape(X.shape[1], -1)
    R = Y.reshape(len(X), -1) - X @ W - np.reshape(b, (1, -1))
    g = X.T @ R / len(X)  # = -∇f
    on = np.abs(g - alpha * np.sign(W))[W != 0]
    off = np.maximum(np.abs(g) - alpha, 0)[W == 0]
    return max(on.max(initial=0), off.max(initial=0), np.abs(R.mean(0)).max())


@pytest.mark.parametrize("gram", [False, True], ids=["data", "gram"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n,d,k", [(60, 20, 1), (25, 40, 3)], ids=["n>d-single", "n<d-multi"])
def test_lasso_matches_sklearn(x64, seed, n, d, k, gram):
    X, Y = problem(seed, n, d, k)
    y = Y[:, 0] if k == 1 else Y
    alpha = 0.05 * float(np.max(np.abs((X - X.mean(0)).T @ (Y - Y.mean(0))))) / n
    sol = lasso(X, y, jnp.asarray(alpha), solver=TIGHT, gram=gram)
    assert sol.result == RESULTS.successful
    assert sol.value.shape == ((d,) if k == 1 else (d, k)) and sol.value.dtype == jnp.float64
    sk = Lasso(alpha=alpha, tol=1e-12, max_iter=1_000_000).fit(X, y)
    ours = sq_objective(X, Y, np.asarray(sol.value), np.asarray(sol.intercept), alpha)
    theirs = sq_objective(X, Y, sk.coef_.T, sk.intercept_, alpha)
    assert rel(ours, theirs) < 1e-6, (ours, theirs)
    assert rel(float(sol.stats["objective"]), ours) < 1e-9
    assert kkt_violation(X, Y, np.asarray(sol.value), np.asarray(sol.intercept), alpha) < 1e-6
    assert float(sol.stats["duality_gap"]) <= 1e-10 * ours


@pytest.mark.parametrize("gram", [False, True], ids=["data", "gram"])
@pytest.mark.parametrize("seed,n,d", [(0, 60, 20), (1, 25, 40)])
def test_multitask_matches_sklearn(x64, seed, n, d, gram):
    X, Y = problem(seed, n, d, 4)
    alpha = 0.1
    sol = lasso(X, Y, alpha, penalty="group_l1", solver=TIGHT, gram=gram)
    sk = MultiTaskLasso(alpha=alpha, tol=1e-12, max_iter=1_000_000).fit(X, Y)
    ours = sq_objective(X, Y, np.asarray(sol.value), np.asarray(sol.intercept), alpha, True)
    theirs = sq_objective(X, Y, sk.coef_.T, sk.intercept_, alpha, True)
    assert rel(ours, theirs) < 1e-6, (ours, theirs)
    # group KKT: ‖g_j‖ <= alpha on zero rows, g_j = alpha·W_j/‖W_j‖ on the others
    W = np.asarray(sol.value)
    R = Y - X @ W - np.asarray(sol.intercept)
    g = X.T @ R / n
    norms = np.linalg.norm(W, axis=1)
    assert np.all(np.linalg.norm(g[norms == 0], axis=1) <= alpha + 1e-7)
    on = g[norms > 0] - alpha * W[norms > 0] / norms[norms > 0, None]
    assert np.abs(on).max(initial=0) < 1e-6


def test_custom_groups_kkt(x64):
    X, Y = problem(3, 50, 12, 2)
    groups = np.repeat(np.arange(4), 3)
    sol = lasso(X, Y, 0.3, penalty="group_l1", groups=groups, solver=TIGHT)
    W = np.asarray(sol.value)
    g = X.T @ (Y - X @ W - np.asarray(sol.intercept)) / len(X)
    for j in range(4):
        Wg, gg = W[groups == j], g[groups == j]
        if np.linalg.norm(Wg) == 0:
            assert np.linalg.norm(gg) <= 0.3 + 1e-7
        else:
            np.testing.assert_allclose(gg, 0.3 * Wg / np.linalg.norm(Wg), atol=1e-6)
    assert float(sol.stats["kkt_residual"]) < 1e-6


def _logistic_objective(X, y01, w, b, alpha):
    z = X @ w + b
    return np.mean(np.logaddexp(0, z) - y01 * z) + alpha * np.abs(w).sum()


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_logistic_matches_sklearn(x64, seed, fit_intercept):
    rng = np.random.default_rng(seed)
    n, d, C = 80, 8, 0.5
    X = rng.standard_normal((n, d)) + 0.3
    y = (X @ rng.standard_normal(d) + 0.5 * rng.standard_normal(n) > 0.3).astype(int)
    alpha = 1 / (C * n)  # sklearn: C·Σ log-loss + ‖w‖₁  ==  n·C·(mean log-loss + alpha‖w‖₁)
    sol = lasso(X, y, alpha, loss="logistic", fit_intercept=fit_intercept, solver=TIGHT)
    # saga leaves the intercept unpenalised (as here); liblinear would penalise it
    skl = "saga" if fit_intercept else "liblinear"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # l1_ratio with liblinear / convergence chatter
        sk = LogisticRegression(
            l1_ratio=1.0,
            C=C,
            solver=skl,
            tol=1e-12,
            max_iter=1_000_000,
            fit_intercept=fit_intercept,
        ).fit(X, y)
    ours = _logistic_objective(X, y, np.asarray(sol.value), float(sol.intercept), alpha)
    theirs = _logistic_objective(X, y, sk.coef_[0], float(np.ravel(sk.intercept_)[0]), alpha)
    assert rel(ours, theirs) < 1e-6, (ours, theirs)
    assert ours <= theirs * (1 + 1e-9)


def test_softmax_matches_sklearn(x64):
    rng = np.random.default_rng(0)
    n, d, C = 90, 6, 0.5
    X = rng.standard_normal((n, d))
    y = np.argmax(X[:, :3] + 0.7 * rng.standard_normal((n, 3)), axis=1)
    alpha = 1 / (C * n)
    sol = lasso(X, y, alpha, loss="softmax", solver=TIGHT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = LogisticRegression(
            l1_ratio=1.0, C=C, solver="saga", tol=1e-12, max_iter=1_000_000
        ).fit(X, y)

    def objective(W, b):
        Z = X @ W + b
        lse = np.log(np.exp(Z - Z.max(1, keepdims=True)).sum(1)) + Z.max(1)
        return np.mean(lse - Z[np.arange(n), y]) + alpha * np.abs(W).sum()

    ours = objective(np.asarray(sol.value), np.asarray(sol.intercept))
    theirs = objective(sk.coef_.T, sk.intercept_)
    assert sol.value.shape == (d, 3)
    assert rel(ours, theirs) < 1e-6, (ours, theirs)


def test_path_matches_sklearn(x64):
    X, Y = problem(4, 40, 30, 1)
    y = Y[:, 0]
    Xc, yc = X - X.mean(0), y - y.mean()  # sklearn's lasso_path does not fit an intercept
    path = lasso_path(X, y, n_alphas=8, eps=1e-2, solver=TIGHT)
    alphas = np.asarray(path.stats["alpha"])
    amax = np.max(np.abs(Xc.T @ yc)) / len(X)  # sklearn's default grid: the same formula
    np.testing.assert_allclose(alphas, amax * np.logspace(0, -2, 8), rtol=1e-12)
    sk_alphas, sk_coefs, _ = sk_lasso_path(Xc, yc, alphas=alphas, tol=1e-12, max_iter=10**6)
    np.testing.assert_allclose(sk_alphas, alphas)
    assert np.all(np.asarray(path.value[0]) == 0) and np.any(np.asarray(path.value[1]) != 0)
    assert path.value.shape == (8, 30) and path.intercept.shape == (8,)
    assert np.all(np.asarray(path.result._value) == RESULTS.successful._value)
    for i, a in enumerate(sk_alphas):
        ours = sq_objective(X, Y, np.asarray(path.value[i]), np.asarray(path.intercept[i]), a)
        theirs = sq_objective(Xc, yc[:, None], sk_coefs[:, i], 0.0, a)
        assert rel(ours, theirs) < 1e-6, (i, ours, theirs)
    # the group path starts at the row-norm alpha_max
    gp = lasso_path(X, Y, n_alphas=3, penalty="group_l1", solver=TIGHT)
    amax = np.max(np.linalg.norm(Xc.T @ (Y - Y.mean(0)), axis=1)) / len(X)
    np.testing.assert_allclose(float(gp.stats["alpha"][0]), amax, rtol=1e-12)


@pytest.mark.parametrize(
    "solver",
    [
        FISTA(rtol=1e-11, max_steps=200_000, step_size="backtracking"),
        FISTA(rtol=1e-11, max_steps=200_000, restart=False),
    ],
    ids=["backtracking", "no-restart"],
)
def test_solver_options_agree(x64, solver):
    X, Y = problem(5, 50, 30, 2)
    ref = lasso(X, Y, 0.1, solver=TIGHT)
    sol = lasso(X, Y, 0.1, solver=solver)
    assert rel(float(sol.stats["objective"]), float(ref.stats["objective"])) < 1e-8


def test_warm_start(x64):
    X, Y = problem(6, 50, 30, 2)
    cold = lasso(X, Y, 0.1, solver=TIGHT)
    warm = lasso(X, Y, 0.09, init=cold, solver=TIGHT)
    again = lasso(X, Y, 0.1, init=cold, solver=TIGHT)
    assert int(again.stats["num_steps"]) <= 10
    assert int(warm.stats["num_steps"]) < int(lasso(X, Y, 0.09, solver=TIGHT).stats["num_steps"])


def test_max_steps_and_throw():
    X, Y = problem(0, 60, 20, 2)
    X, Y = X.astype(np.float32), Y.astype(np.float32)
    solver = FISTA(rtol=1e-12, max_steps=3)
    sol = lasso(X, Y, 0.01, solver=solver, throw=False)
    assert sol.result == RESULTS.max_steps_reached
    assert int(sol.stats["num_steps"]) == 3
    with pytest.raises(Exception, match="max_steps"):
        jax.block_until_ready(lasso(X, Y, 0.01, solver=solver))
    path = lasso_path(X, Y, n_alphas=3, solver=solver, throw=False)
    assert path.result._value.shape == (3,)
    with pytest.raises(Exception, match="max_steps"):
        jax.block_until_ready(lasso_path(X, Y, n_alphas=3, solver=solver))


def test_compiles_once_over_data_alpha_and_path():
    rng = np.random.default_rng(0)
    solver = FISTA(rtol=1e-5, max_steps=2000)

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def fit(X, Y, alpha):
        return lasso(X, Y, alpha, solver=solver, throw=False)

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def path(X, Y, alphas):
        return lasso_path(X, Y, alphas=alphas, solver=solver, throw=False)

    for seed in range(3):
        X = jnp.asarray(rng.standard_normal((30, 10)), jnp.float32)
        Y = jnp.asarray(rng.standard_normal((30, 2)), jnp.float32)
        sol = fit(X, Y, jnp.asarray(0.05 * (seed + 1), jnp.float32))
        assert sol.result == RESULTS.successful
        p = path(X, Y, jnp.geomspace(1.0, 0.01 * (seed + 1), 5).astype(jnp.float32))
        assert p.value.shape == (5, 10, 2)
    # vmap over targets with different feature masks: one batched program, same answers
    Ys = jnp.asarray(rng.standard_normal((3, 30, 2)), jnp.float32)
    masks = jnp.asarray(rng.random((3, 10)) < 0.6, jnp.float32)
    alphas = jnp.asarray([0.02, 0.05, 0.1], jnp.float32)
    batched = jax.vmap(lambda m, y, a: lasso(X * m, y, a, solver=solver, throw=False))(
        masks, Ys, alphas
    )
    for i in range(3):
        one = fit(X * masks[i], Ys[i], alphas[i])  # no retrace: same shapes as above
        np.testing.assert_allclose(batched.value[i], one.value, atol=1e-4)
        assert np.all(np.asarray(batched.value[i])[np.asarray(masks[i]) == 0] == 0)


def test_bad_inputs():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 5)).astype(np.float32)
    y = rng.standard_normal(20).astype(np.float32)
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
        lasso(X, y, -1.0)
    with pytest.raises(ValueError, match=r"X has shape \(20, 5\), Y \(19,\)"):
        lasso(X, y[:19], 0.1)
    with pytest.raises(ValueError, match="X must be 2-D"):
        lasso(X[0], y, 0.1)
    with pytest.raises(ValueError, match="gram=True needs loss='squared'"):
        lasso(X, (y > 0).astype(np.float32), 0.1, loss="logistic", gram=True)
    Xbad = X.copy()
    Xbad[7, 3] = np.nan
    Xbad[9, 1] = np.inf
    with pytest.raises(ValueError, match="X has 2 non-finite value.*NaN at row 7, column 3"):
        lasso(Xbad, y, 0.1)
    ybad = y.copy()
    ybad[4] = np.inf
    with pytest.raises(ValueError, match="Y has 1 non-finite.*inf at row 4"):
        lasso(X, ybad, 0.1)
    with pytest.raises(ValueError, match="loss must be one of"):
        lasso(X, y, 0.1, loss="hinge")
    with pytest.raises(ValueError, match=r"init must have the coefficients' shape \(5, 1\)"):
        lasso(X, y, 0.1, init=np.zeros(4))
    Xz = X.copy()
    Xz[:, 2] = 0.0
    Xz[:, 4] = 1.5  # constant: zero variance once centred
    with pytest.warns(UserWarning, match=r"2 zero-variance column\(s\) \(2, 4\)"):
        sol = lasso(Xz, y, 0.01)
    W = np.asarray(sol.value)
    assert np.all(np.isfinite(W)) and W[2] == 0 and W[4] == 0
    # under vmap the value checks cannot raise: non-finite data gives the result code
    sol = jax.vmap(lambda x: lasso(x, y, 0.1, throw=False))(jnp.stack([X, Xbad]))
    assert sol.result._value.tolist() == [RESULTS.successful._value, RESULTS.nonfinite._value]


def test_real_activations_match_sklearn(x64):
    """Activations of the shipped induction model: layer 1's attention output regressed on
    layer 0's heads (CircuitLasso's design), Lasso and MultiTaskLasso, within 1e-6."""
    import jaxcirc as jc

    model = jc.zoo.induction_model()
    task = jc.zoo.induction_task(6, 8, seed=0)
    acts = jax.vmap(lambda t: model.run(t)[1])(task.clean)
    X = np.asarray(acts[jc.SiteRef("z", 0)], np.float64).reshape(
        -1, model.cfg.n_heads * model.cfg.d_head
    )
    Y = np.asarray(acts[jc.SiteRef("attn_out", 1)], np.float64).reshape(len(X), -1)[:, :6]
    scale = float(np.max(np.abs((X - X.mean(0)).T @ (Y - Y.mean(0))))) / len(X)
    for group, alpha in ((False, 0.05 * scale), (True, 0.1 * scale)):
        sol = lasso(X, Y, alpha, penalty="group_l1" if group else "l1", solver=TIGHT)
        est = MultiTaskLasso if group else Lasso
        sk = est(alpha=alpha, tol=1e-12, max_iter=1_000_000).fit(X, Y)
        ours = sq_objective(X, Y, np.asarray(sol.value), np.asarray(sol.intercept), alpha, group)
        theirs = sq_objective(X, Y, sk.coef_.T, sk.intercept_, alpha, group)
        assert rel(ours, theirs) < 1e-6, (group, ours, theirs)
        assert np.count_nonzero(np.asarray(sol.value)) > 0


def correlated(n, d, k, seed=0):
    """float32 data a first-order method finds hard: columns driven by a few shared factors
    (pairwise correlation about 0.8), unequal scales and offsets; a sparse multi-target Y."""
    rng = np.random.default_rng(seed)
    factors = rng.standard_normal((n, 4))
    X = factors @ rng.standard_normal((4, d)) + 0.5 * rng.standard_normal((n, d))
    X = X * rng.uniform(0.3, 3.0, d) + rng.uniform(-5, 5, d)
    B = rng.standard_normal((d, k)) * (rng.random((d, k)) < 0.05)
    Y = X @ B + 0.5 * rng.standard_normal((n, k)) + rng.uniform(-2, 2, k)
    return X.astype(np.float32), Y.astype(np.float32)


@pytest.mark.parametrize(
    "gram,shape",
    [(None, (600, 120, 12)), (False, (600, 120, 12)), (None, (1500, 300, 40))],
    ids=["gram", "data", "gram-1500x300x40"],
)
def test_float32_defaults_converge(gram, shape):
    """Default arguments on an ordinary float32 problem: no exception, a converged code, the
    objective within 1e-5 of scikit-learn's (tol 1e-8, float64), and a gap that is an honest
    bound (>= the distance from scikit-learn's objective) and at the data form's floor (the
    Gram form re-anchors instead of stopping at its own, larger floor)."""
    X, Y = correlated(*shape)
    sol = lasso(X, Y, 0.05, gram=gram)
    assert bool(sol.converged)
    sk = Lasso(alpha=0.05, tol=1e-8, max_iter=100_000).fit(X.astype(np.float64), Y)
    ours = sq_objective(X.astype(np.float64), Y, np.asarray(sol.value, np.float64),
                        np.asarray(sol.intercept, np.float64), 0.05)  # fmt: skip
    theirs = sq_objective(X.astype(np.float64), Y, sk.coef_.T, sk.intercept_, 0.05)
    assert (ours - theirs) / theirs < 1e-5, (ours, theirs)
    gap = float(sol.stats["duality_gap"])
    assert ours - theirs <= gap + 1e-6 * theirs
    # the float32 floor of these strongly collinear problems: the iterate freezes (its steps
    # fall below the resolution of W) at a gap of about 3e-4 (600 x 120) and 1.6e-3
    # (1500 x 300) of the objective, while the objective is within 1e-7 of scikit-learn's
    assert gap <= 5e-3 * float(sol.stats["objective"])
    assert int(sol.stats["num_steps"]) < 2000


def test_float64_reaches_rtol_not_the_floor(x64):
    """The floor is a float32 matter: in float64 the same problem meets rtol itself."""
    X, Y = correlated(600, 120, 12)
    for gram in (True, False):
        sol = lasso(X.astype(np.float64), Y.astype(np.float64), 0.05, gram=gram)
        assert sol.result == RESULTS.successful
        assert float(sol.stats["duality_gap"]) <= 1e-6 * float(sol.stats["objective"])
        assert float(sol.stats["precision_floor"]) < 1e-9 * float(sol.stats["objective"])


def test_float32_logistic_defaults_converge():
    X, Y = correlated(400, 30, 1, seed=3)
    y = (Y[:, 0] > np.median(Y[:, 0])).astype(np.int32)
    sol = lasso(X, y, 0.01, loss="logistic")
    assert bool(sol.converged)
    assert float(sol.stats["kkt_residual"]) <= max(
        1e-6 * float(sol.stats["alpha_max"]), float(sol.stats["precision_floor"]) * 16
    )


def test_precision_floor_is_not_max_steps():
    """A problem stopped at its floor is converged (throw=True passes); a genuinely
    unconverged one still raises."""
    X, Y = correlated(300, 60, 4, seed=1)
    sol = lasso(X, Y, 0.02)  # must not raise
    assert sol.result in (RESULTS.successful, RESULTS.precision_floor)
    short = lasso(X, Y, 0.02, solver=FISTA(max_steps=20), throw=False)
    assert short.result == RESULTS.max_steps_reached and not bool(short.converged)


def test_stop_at_floor_false_runs_exact_steps():
    """With the floor stop off, a solve whose tolerance cannot be met runs to max_steps."""
    X, Y = correlated(300, 60, 4, seed=1)
    solver = FISTA(rtol=0.0, atol=float("-inf"), max_steps=160, stop_at_floor=False)
    sol = lasso(X, Y, 0.02, solver=solver, throw=False)
    assert int(sol.stats["num_steps"]) == 160 and sol.result == RESULTS.max_steps_reached
