"""`lasso` and `lasso_path`: L1 / group-L1 penalised least squares, logistic and softmax
regression with scikit-learn's objective scaling, solved by FISTA."""

from __future__ import annotations

import warnings
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike

from ._fista import FISTA, AbstractSolver, iterate
from ._problem import Problem
from ._solution import RESULTS, Solution

_LOSSES = ("squared", "logistic", "softmax")
_PENALTIES = ("l1", "group_l1")


# ---------------------------------------------------------------- the compiled core


def _build(
    X, Y, groups, *, loss, penalty, n_groups, fit_intercept, gram=False
) -> tuple[Problem, dict]:
    """Centre (if `fit_intercept`), mask zero-variance columns, scale the columns to unit
    root-mean-square (not with explicit `groups`, whose norms mix columns), compute `alpha_max`,
    and (with `gram`, squared loss) keep `XᵀX/n`, `XᵀY/n`, `‖Y_t‖²/n` instead of `X`, `Y`."""
    n = X.shape[0]
    eps = jnp.finfo(X.dtype).eps
    if fit_intercept:
        xm = jnp.mean(X, axis=0)
        Xc = X - xm
        scale = jnp.sqrt(n) * jnp.max(jnp.abs(X), axis=0)
        colmask = jnp.sqrt(jnp.sum(Xc * Xc, axis=0)) > 100 * eps * scale
    else:
        xm = jnp.zeros(X.shape[1], X.dtype)
        Xc = X
        colmask = jnp.any(X != 0, axis=0)
    Xc = jnp.where(colmask, Xc, 0.0)
    rms = jnp.sqrt(jnp.sum(Xc * Xc, axis=0) / n)
    if penalty == "group_l1" and groups is not None:
        rms = jnp.ones_like(rms)
    colscale = jnp.where(colmask & (rms > 0), rms, 1.0)
    Xc = Xc / colscale
    ym = jnp.zeros(Y.shape[1], X.dtype)
    b0 = jnp.zeros(Y.shape[1], X.dtype)
    if loss == "squared" and fit_intercept:
        ym = jnp.mean(Y, axis=0)
        Y = Y - ym
    elif fit_intercept:
        p = jnp.clip(jnp.mean(Y, axis=0), eps, 1 - eps)
        b0 = jnp.log(p / (1 - p)) if loss == "logistic" else jnp.log(p)
    fit_b = fit_intercept and loss != "squared"
    diag = jnp.sum(Xc * Xc, axis=0) / n
    yy = W_ref = Xd = Yd = None
    if gram:
        Xd, Yd, W_ref = Xc, Y, jnp.zeros((X.shape[1], Y.shape[1]), X.dtype)
        Xc, Y, yy = Xc.T @ Xc / n, Xc.T @ Y / n, jnp.sum(Y * Y, axis=0) / n
    problem = Problem(
        X=Xc,
        Y=Y,
        colmask=colmask,
        groups=groups,
        alpha_max=jnp.array(0.0, X.dtype),
        b0=b0,
        weights=1.0 / colscale,
        diag=diag,
        n_samples=n,
        loss=loss,
        penalty=penalty,
        n_groups=n_groups,
        fit_b=fit_b,
        gram=gram,
        yy=yy,
        W_ref=W_ref,
        Xd=Xd,
        Yd=Yd,
    )
    gW, _ = problem.grads(jnp.broadcast_to(b0, Y.shape))
    problem = eqx.tree_at(lambda p: p.alpha_max, problem, problem.dual_norm(gW))
    finite = jnp.all(jnp.isfinite(X)) & jnp.all(jnp.isfinite(Y))
    return problem, dict(xm=xm, ym=ym, finite=finite, colscale=colscale)


def _solve_one(solver, problem, centre, alpha, W0, b0):
    """Solve at one `alpha` from `(W0, b0)` (original coordinates); return
    `(W, b_original, centred_b, result, stats)`."""
    alpha = eqx.error_if(alpha, alpha < 0, "alpha must be >= 0")
    bc0 = problem.b0 if b0 is None else b0 + centre["xm"] @ W0
    if not problem.fit_b:
        bc0 = jnp.zeros_like(problem.b0)
    state, result = iterate(solver, problem, alpha, W0 * centre["colscale"][:, None], bc0)
    result = RESULTS.where(centre["finite"], result, RESULTS.nonfinite)  # NaN columns are masked
    W = state.W / centre["colscale"][:, None]
    b = centre["ym"] + state.b - centre["xm"] @ W
    stats = dict(
        num_steps=state.num_steps,
        objective=state.objective,
        duality_gap=state.duality_gap,
        kkt_residual=state.kkt_residual,
        precision_floor=state.precision_floor,
        lipschitz=state.lipschitz,
        num_restarts=state.num_restarts,
    )
    return W, b, result, stats


def _throw(sol: Solution) -> Solution:
    bad = ~sol.converged
    return sol.result.error_if(sol, jnp.any(bad) if bad.ndim else bad)


@eqx.filter_jit
def _fit(X, Y, alpha, W0, b0, groups, *, loss, penalty, n_groups, fit_intercept, solver, gram):
    problem, centre = _build(
        X, Y, groups, loss=loss, penalty=penalty, n_groups=n_groups,
        fit_intercept=fit_intercept, gram=gram,
    )  # fmt: skip
    W, b, result, stats = _solve_one(solver, problem, centre, alpha, W0, b0)
    stats["alpha_max"] = problem.alpha_max
    return Solution(value=W, result=result, stats=stats, intercept=b)


@eqx.filter_jit
def _fit_path(
    X,
    Y,
    alphas,
    W0,
    b0,
    groups,
    *,
    n_alphas,
    eps,
    loss,
    penalty,
    n_groups,
    fit_intercept,
    solver,
    gram,
):
    problem, centre = _build(
        X, Y, groups, loss=loss, penalty=penalty, n_groups=n_groups,
        fit_intercept=fit_intercept, gram=gram,
    )  # fmt: skip
    if alphas is None:
        grid = jnp.logspace(0.0, jnp.log10(eps), n_alphas, dtype=X.dtype)
        alphas = problem.alpha_max * grid

    def body(carry, alpha):
        W, b = carry
        W, b, result, stats = _solve_one(solver, problem, centre, alpha, W, b)
        return (W, b), (W, b, result, stats)

    b_init = b0 if b0 is not None else problem.b0 - centre["xm"] @ W0 + centre["ym"]
    _, (Ws, bs, results, stats) = jax.lax.scan(body, (W0, b_init), alphas)
    stats["alpha"] = alphas
    stats["alpha_max"] = problem.alpha_max
    return Solution(value=Ws, result=results, stats=stats, intercept=bs)


# ---------------------------------------------------------------- input handling


def _concrete(x) -> np.ndarray | None:
    """`x` as NumPy if it is concrete, None under jit/vmap tracing."""
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def _check_finite(name: str, x) -> None:
    xc = _concrete(x)
    if xc is None or np.all(np.isfinite(xc)):
        return
    where = tuple(int(i) for i in np.argwhere(~np.isfinite(xc))[0])
    kind = "NaN" if np.isnan(xc[where]) else "inf"
    if xc.ndim == 2:
        pos = f"row {where[0]}, column {where[1]}"
    else:
        pos = f"row {where[0]}" if where else "the value"
    count = int(np.sum(~np.isfinite(xc)))
    raise ValueError(f"{name} has {count} non-finite value(s); the first is {kind} at {pos}")


def _prepare(X, Y, alpha, groups, loss, penalty, fit_intercept, dtype_from=None):
    if loss not in _LOSSES:
        raise ValueError(f"loss must be one of {_LOSSES}, got {loss!r}")
    if penalty not in _PENALTIES:
        raise ValueError(f"penalty must be one of {_PENALTIES}, got {penalty!r}")
    X = jnp.asarray(X)
    if not jnp.issubdtype(X.dtype, jnp.floating):
        X = X.astype(jnp.result_type(float))
    dtype = X.dtype
    Y = jnp.asarray(Y)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D [n_samples, n_features], got shape {X.shape}")
    if Y.ndim not in (1, 2):
        raise ValueError(f"Y must be 1-D [n_samples] or 2-D [n_samples, n_targets], got {Y.shape}")
    if Y.shape[0] != X.shape[0]:
        raise ValueError(
            f"X and Y must have the same number of samples: X has shape {X.shape}, Y {Y.shape}"
        )
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(
            f"X has shape {X.shape}: a Lasso needs at least one sample (row) and one feature "
            "(column)"
        )
    _check_finite("X", X)
    squeeze = Y.ndim == 1
    if loss == "softmax":
        squeeze = False
        if Y.ndim == 1:
            labels = _concrete(Y)
            if labels is None:
                raise ValueError(
                    "loss='softmax' under jit/vmap needs one-hot Y [n_samples, n_classes]"
                )
            if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
                raise ValueError("loss='softmax' needs integer labels 0..K-1 or one-hot Y")
            Y = jax.nn.one_hot(Y, int(labels.max()) + 1, dtype=dtype)
    elif loss == "logistic":
        yc = _concrete(Y)
        if yc is not None and not np.all(np.isin(yc, (0, 1, -1))):
            raise ValueError("loss='logistic' needs labels in {0, 1} or {-1, 1}")
        Y = (Y > 0).astype(dtype)
    Y = Y.astype(dtype)
    _check_finite("Y", Y)
    if Y.ndim == 1:
        Y = Y[:, None]

    ac = _concrete(alpha)
    if ac is not None:
        if ac.shape != ():
            raise ValueError(f"alpha must be a scalar, got shape {ac.shape}")
        if not np.isfinite(ac) or ac < 0:
            raise ValueError(f"alpha must be a finite number >= 0, got {float(ac)}")
    alpha = jnp.asarray(alpha, dtype)

    n_groups = X.shape[1]
    if groups is not None:
        if penalty != "group_l1":
            raise ValueError("groups= is only used with penalty='group_l1'")
        g = _concrete(groups)
        if g is None:
            raise ValueError("groups must be concrete (it sets the number of groups)")
        if g.shape != (X.shape[1],):
            raise ValueError(
                f"groups must have shape [n_features] = ({X.shape[1]},), got {g.shape}"
            )
        _, inverse = np.unique(g, return_inverse=True)
        n_groups = int(inverse.max()) + 1
        groups = jnp.asarray(inverse.reshape(-1), jnp.int32)

    Xc = _concrete(X)
    if Xc is not None:
        var = Xc.std(axis=0) if fit_intercept else np.abs(Xc).max(axis=0)
        dead = np.flatnonzero(var == 0)
        if dead.size:
            names = ", ".join(map(str, dead[:10])) + (", ..." if dead.size > 10 else "")
            warnings.warn(
                f"X has {dead.size} zero-variance column(s) ({names}); their coefficients are "
                "fixed at 0",
                stacklevel=3,
            )
    return X, Y, alpha, groups, n_groups, squeeze


def _use_gram(gram, loss, X) -> bool:
    if gram is None:
        return loss == "squared" and X.shape[1] <= X.shape[0]
    if gram and loss != "squared":
        raise ValueError(f"gram=True needs loss='squared'; got loss={loss!r}")
    return bool(gram)


def _init(init, d, k, dtype):
    if init is None:
        return jnp.zeros((d, k), dtype), None
    if isinstance(init, Solution):
        W, b = init.value, init.intercept
    else:
        W, b = init, None
    W = jnp.asarray(W, dtype)
    if W.ndim == 1:
        W = W[:, None]
    if W.shape != (d, k):
        raise ValueError(f"init must have the coefficients' shape ({d}, {k}), got {W.shape}")
    if b is not None:
        b = jnp.broadcast_to(jnp.asarray(b, dtype), (k,))
    return W, b


def _squeeze(sol: Solution, squeeze: bool) -> Solution:
    if not squeeze:
        return sol
    return eqx.tree_at(
        lambda s: (s.value, s.intercept), sol, (sol.value[..., 0], sol.intercept[..., 0])
    )


# ---------------------------------------------------------------- public API


def lasso(
    X: ArrayLike,
    Y: ArrayLike,
    alpha: ArrayLike,
    *,
    loss: Literal["squared", "logistic", "softmax"] = "squared",
    penalty: Literal["l1", "group_l1"] = "l1",
    groups: ArrayLike | None = None,
    fit_intercept: bool = True,
    init: Solution | ArrayLike | None = None,
    solver: AbstractSolver = FISTA(),
    throw: bool = True,
    gram: bool | None = None,
    mesh=None,
    target_axis=None,
) -> Solution:
    """Penalised linear regression / classification with scikit-learn's objective scaling.

    Minimises, over `W` (`[d, k]`, or `[d]` for 1-D `Y`) and an unpenalised intercept `b`,

    - `loss="squared"`: `(1/(2n))·‖Y − XW − b‖²_F + alpha·‖W‖₁`, exactly scikit-learn's
      `Lasso(alpha)` (multi-output `Y` fits every column with the same alpha, as `Lasso`
      does). With `penalty="group_l1"` and `groups=None` the penalty is
      `alpha·Σ_j ‖W_j‖₂` over the rows of `W`: scikit-learn's `MultiTaskLasso(alpha)`.
      The intercept is fitted as scikit-learn does: centre `X` and `Y`, solve, then
      `b = mean(Y) − mean(X)·W`.
    - `loss="logistic"` (labels in {0,1} or {−1,1}; each column of 2-D `Y` is a separate
      binary problem): `(1/n)·Σ_i log(1 + exp(−ỹ_i (x_iW + b))) + alpha·‖W‖₁`. scikit-learn's
      `LogisticRegression(l1_ratio=1, C=C)` (formerly `penalty="l1"`) minimises
      `C·Σ_i log-loss + ‖w‖₁`, the same minimiser as `alpha = 1/(C·n)`. (liblinear also
      penalises the intercept; saga does not, as here.)
    - `loss="softmax"` (integer labels `0..K−1` or one-hot `Y`): mean multinomial
      cross-entropy + `alpha·‖W‖₁`, `W` is `[d, K]`; again `alpha = 1/(C·n)` for
      scikit-learn's multinomial `LogisticRegression`.

    `penalty="group_l1"` with `groups` (an id per feature) uses `alpha·Σ_g ‖W_g‖_F`
    (unweighted; a group's rows across all outputs). Zero-variance columns of `X` (all-zero
    columns without an intercept) get coefficient 0 and a warning, so masking features by
    zeroing their columns is a valid way to give a batch of problems the same shapes.

    **Arguments:** `alpha` may be a traced array: changing it never recompiles. `init` is a
    warm start (a previous `Solution` or coefficients). `solver` holds the tolerances and
    `max_steps` (see `FISTA`). `gram` (squared loss): solve on `XᵀX/n` and `XᵀY/n`, one
    `[d, d] @ [d, k]` product per step instead of two `[n, d]` ones; `None` picks it when
    `d <= n`; a Gram solve that reaches the rounding floor of float32 is
    re-anchored at its iterate with a gradient from the data and continued (iterative
    refinement), so both forms certify the same precision. With `throw=True` a solve that
    does not converge raises (also under jit); with `throw=False` check `sol.converged` /
    `sol.result`.

    **Convergence in float32.** The default `rtol=1e-6` is a duality gap of 1e-6 of the
    objective; in float32 the gradient's rounding error keeps the certifiable gap near
    1e-6..1e-4 of the objective on ordinary data (correlated columns, many targets). A solve
    that reaches that floor stops with `RESULTS.precision_floor`, a converged result: the
    reported gap still bounds the distance of the objective from the optimum, and in practice
    the objective is far more accurate (1e-8 relative or better against scikit-learn in
    float64, `benchmarks/RESULTS.md`). Columns are scaled to unit variance internally (a
    diagonal preconditioner; the solution is that of the unscaled problem).

    **Returns:** a `Solution`: `value`/`coef` (`[d, k]`, scikit-learn's `coef_.T`),
    `intercept`, `result`, `converged`, `stats` (`num_steps`, `objective`, `duality_gap`,
    `kkt_residual`, `precision_floor`, `lipschitz`, `alpha_max`).

    **Many targets on many devices:** with `mesh` (a `jax.sharding.Mesh`), the columns of `Y`
    (independent problems: `penalty="l1"`, squared or logistic loss) are split over the mesh
    axis `target_axis` (default: its first; a tuple of names splits over their product) and
    `X` is replicated; the solve runs as one SPMD program (GSPMD), whose only communication
    is the scalar convergence test. Squared-loss targets are padded with zero columns (which
    change no sum) to a multiple of the devices; logistic ones must divide evenly.

    Works under `jax.jit` and `jax.vmap` (the NaN/shape-of-alpha checks and the zero-variance
    warning then only run on concrete inputs; non-finite data gives `RESULTS.nonfinite`).
    """
    X, Y, alpha, groups, n_groups, squeeze = _prepare(
        X, Y, alpha, groups, loss, penalty, fit_intercept
    )
    W0, b0 = _init(init, X.shape[1], Y.shape[1], X.dtype)
    k = Y.shape[1]
    if mesh is not None:
        X, Y, W0, b0 = _split_targets(X, Y, W0, b0, mesh, target_axis, loss, penalty)
    sol = _fit(
        X,
        Y,
        alpha,
        W0,
        b0,
        groups,
        loss=loss,
        penalty=penalty,
        n_groups=n_groups,
        fit_intercept=fit_intercept,
        solver=solver,
        gram=_use_gram(gram, loss, X),
    )
    if sol.value.shape[-1] != k:  # padded targets dropped
        sol = eqx.tree_at(lambda s: (s.value, s.intercept), sol,
                          (sol.value[..., :k], sol.intercept[..., :k]))  # fmt: skip
    return _squeeze(_throw(sol) if throw else sol, squeeze)


def _split_targets(X, Y, W0, b0, mesh, target_axis, loss, penalty):
    """`X` replicated and the targets (columns of `Y`, `W0`, `b0`) split over the mesh."""
    from .._mesh import axis_size, check_mesh, replicate, split_along

    if penalty != "l1" or loss not in ("squared", "logistic"):
        raise ValueError(
            f"mesh= splits independent targets: it needs penalty='l1' with loss 'squared' or "
            f"'logistic' (got penalty={penalty!r}, loss={loss!r}, whose columns are coupled)"
        )
    axes = check_mesh(mesh, target_axis, "target_axis")
    k = Y.shape[1]
    pad = -k % axis_size(mesh, axes)
    if pad and loss == "squared":  # a zero target has a zero solution and adds nothing
        Y = jnp.pad(Y, ((0, 0), (0, pad)))
        W0 = jnp.pad(W0, ((0, 0), (0, pad)))
        b0 = None if b0 is None else jnp.pad(b0, (0, pad))
    split = lambda a, dim: split_along(mesh, axes, a, dim, what="number of targets")
    b0 = None if b0 is None else split(b0, 0)
    return replicate(mesh, X), split(Y, 1), split(W0, 1), b0


def lasso_path(
    X: ArrayLike,
    Y: ArrayLike,
    *,
    n_alphas: int = 100,
    eps: float = 1e-3,
    alphas: ArrayLike | None = None,
    loss: Literal["squared", "logistic", "softmax"] = "squared",
    penalty: Literal["l1", "group_l1"] = "l1",
    groups: ArrayLike | None = None,
    fit_intercept: bool = True,
    init: Solution | ArrayLike | None = None,
    solver: AbstractSolver = FISTA(),
    throw: bool = True,
    gram: bool | None = None,
) -> Solution:
    """The solutions of `lasso` along a decreasing grid of alphas, as ONE compiled `lax.scan`
    with warm starts (the path of scikit-learn's `lasso_path`).

    The default grid runs from `alpha_max` (the smallest alpha whose solution is all zero:
    `‖Xᵀ(Y − Ȳ)‖_∞/n`, the largest row norm for `group_l1`, the gradient at the
    intercept-only fit for the other losses) down to `eps·alpha_max`, `n_alphas` points
    evenly spaced in log scale. Pass `alphas` (any order; solved in the order given) to fix it.

    **Returns:** a `Solution` whose arrays have a leading alpha axis: `value` `[n_alphas, d(,
    k)]`, `intercept`, `result` (one code per alpha) and `stats` (each per alpha, plus
    `stats["alpha"]`).
    """
    a0 = 0.0 if alphas is None else jnp.asarray(alphas).reshape(-1)[:1].sum() * 0
    X, Y, _, groups, n_groups, squeeze = _prepare(X, Y, a0, groups, loss, penalty, fit_intercept)
    if alphas is not None:
        alphas = jnp.asarray(alphas, X.dtype)
        if alphas.ndim != 1:
            raise ValueError(f"alphas must be 1-D, got shape {alphas.shape}")
        ac = _concrete(alphas)
        if ac is not None and (not np.all(np.isfinite(ac)) or np.any(ac < 0)):
            raise ValueError("alphas must be finite and >= 0")
    elif not (n_alphas >= 1 and 0 < eps <= 1):
        raise ValueError(f"need n_alphas >= 1 and 0 < eps <= 1, got {n_alphas}, {eps}")
    W0, b0 = _init(init, X.shape[1], Y.shape[1], X.dtype)
    sol = _fit_path(
        X,
        Y,
        alphas,
        W0,
        b0,
        groups,
        n_alphas=n_alphas,
        eps=eps,
        loss=loss,
        penalty=penalty,
        n_groups=n_groups,
        fit_intercept=fit_intercept,
        solver=solver,
        gram=_use_gram(gram, loss, X),
    )
    return _squeeze(_throw(sol) if throw else sol, squeeze)
