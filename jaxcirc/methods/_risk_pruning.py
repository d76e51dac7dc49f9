"""Interventional-risk pruning of one site: scores, constants and folds (Asiaee 2026,
"Efficient Discovery of Approximate Causal Abstractions via Neural Mechanism Sparsification",
arXiv 2602.24266).

Everything works on arrays of one site, rows = calibration samples (for a transformer a row is
one (example, position)): activations `a`, per-sample gradient `g = ∂ℓ/∂a` and diagonal
curvature `h ≈ ∂²ℓ/∂a²`, all `[n, n_units, d_unit]` (`[n, n_units]` means `d_unit = 1`).
Replacing unit `j` by `r_nj` changes the risk by, to second order and one unit at a time,

    ΔR_j ≈ (1/n) Σ_n [g_nj δ_nj + ½ h_nj δ_nj²],   δ_nj = r_nj − a_nj,

summed over the unit's `d_unit` coordinates.

**Constant** (a hard intervention `do(a_j = c_j)`), per coordinate, with `H = Σ h`, `G = Σ g`,
`HA = Σ h a`, `GA = Σ g a`, `HAA = Σ h a²`:
`Q(c) = ½ H c² + c (G − HA) + (½ HAA − GA)`, minimised by `c* = (HA − G) / H` with
`Q* = (½ HAA − GA) − (G − HA)² / (2H)` (the undamped formula, `damping=None`; units with
`H ≤ 1e-10` fall back to the mean, as in the author's follow-up code).

*Damping* (our choice; the undamped formula collapses to chance in the follow-up code because
units with tiny `H` get huge Newton steps `−G/H`): `c = (HA − G + κ ā) / (H⁺ + κ)`, with `ā`
the plain mean, `H⁺ = max(H, 0)` and `κ = damping · median(|H|)` over all coordinates of the
site; then `c` is clipped to the range of the unit's observed activations (`clip=True`). The
score is always `Q(c) / n` at the returned `c`, evaluated directly as `(1/n) Σ_n [g δ + ½ h δ²]`.
Default `damping = 10`: a unit of median curvature takes 1/11 of its Newton step, a unit of tiny
curvature keeps its mean. Chosen on the zoo's digits MLP (`hidden.1`, calibration on the training
split, task cross-entropy): the Newton step fitted on data the network already fits is mostly
noise, and test accuracy of constant pruning rises with damping up to about 10 and then stays
(keep 50%: 0.76 undamped, 0.85 at 1, 0.88 at 10 and at 30). The first-order term is the weak
part: with `g = 0` (the KL to the full model, whose gradient vanishes at the full model) the
same pruning keeps 0.95.

**Variance** (the uniform-curvature special case): score `Σ_e Var(a_je)`, constant the mean.
**Random**: uniform scores from a key, constant the mean.

**Fold** (an affine soft intervention on kept neighbours): the parents of unit
`j` are the `r` kept units other than `j` with the largest `|Pearson corr|`; for `d_unit > 1`
(our choice) a pair's correlation is the largest `|corr|` over all pairs of their coordinates,
and each coordinate of `j` is regressed on all `r · d_unit` coordinates of its parents. The
regression is curvature-weighted ridge, weights `w = max(h, 1e-8)`, with weighted centring
(the intercept is not penalised) and (our choice, so the fit does not depend on the scale of the
loss or of the activations) the ridge relative to the weighted Gram matrix:
`λ = ridge · trace(X̃ᵀX̃) / n_parent_coordinates`. The fold score is `½ Σ_n h (a − â)² / n`
(the second-order risk with the gradient term dropped, as in the regression); pass `g` to
`fold` to add the gradient term `Σ_n g (â − a) / n` (`prune` does, to compare a fold with a
constant on the same footing).

**Selection** (`prune`). One-shot: every method except variance and random ranks units by the
constant score and prunes the lowest (as the follow-up code does for folds too); "auto" then
gives each pruned unit the fold or the constant, whichever has the smaller predicted risk.
Iterative: `block` units at a time are removed from the kept set; between blocks the scores
are recomputed: constant by the constant score, fold by the fold score of each kept unit
folded onto the *other* kept units, auto by the smaller of the two. Folds of earlier blocks
that use a unit removed later are rewritten by substituting that unit's own replacement, so
every pruned unit stays an affine function of the final kept units. With `rescore=None` the
calibration arrays do not change between blocks, so iterative constant, variance and random
pruning equal one-shot; only fold and auto change (a unit whose neighbour is already gone is
no longer cheap to fold). With `rescore(replacement) -> (a, g, h)` the arrays are measured
again on the model with the current replacement applied, before each block.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

from ..models._site import nearest
from ._replacement import CONSTANT, FOLD, KEPT, Replacement

__all__ = [
    "constant_scores",
    "variance_scores",
    "random_scores",
    "fold",
    "Fold",
    "prune",
    "METHODS",
    "SCHEDULES",
]

METHODS = ("constant", "fold", "auto", "variance", "random")
SCHEDULES = ("one-shot", "iterative")
_H_FLOOR = 1e-10  # undamped: units with total curvature at most this fall back to the mean
_W_FLOOR = 1e-8  # fold regression weights max(h, 1e-8) (the follow-up code's floor)
_HIGHEST = jax.lax.Precision.HIGHEST  # Gram matrices in full float32, also on TF32 GPUs
_CHUNK_ELEMENTS = 2**25  # fold: units per lax.map batch so one batch holds about this many


# ---------------------------------------------------------------------------- validation


def _as_units(x, name: str) -> Float[Array, "n n_units d_unit"]:
    x = jnp.asarray(x, jnp.float32)
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3:
        raise ValueError(
            f"{name} must have shape [n, n_units, d_unit] (or [n, n_units]); got {x.shape}"
        )
    return x


def _check_finite(x, name: str) -> None:
    bad = ~np.isfinite(np.asarray(x))
    if bad.any():
        sample, unit, coord = (int(i) for i in np.argwhere(bad)[0])
        units = sorted({int(u) for u in np.argwhere(bad)[:, 1]})
        more = f" (units with non-finite values: {units[:10]})" if len(units) > 1 else ""
        raise ValueError(
            f"{name} is not finite at unit {unit} (sample {sample}, coordinate {coord}){more}"
        )


def _arrays(a, g=None, h=None):
    """`a, g, h` as `[n, n_units, d_unit]` float arrays, checked for shape and finiteness."""
    a = _as_units(a, "a")
    out = [a]
    for name, x in (("g", g), ("h", h)):
        if x is None:
            out.append(None)
            continue
        x = _as_units(x, name)
        if x.shape != a.shape:
            raise ValueError(
                f"{name} has shape {x.shape}; it must match a's shape [n, n_units, d_unit] = "
                f"{a.shape}"
            )
        out.append(x)
    for name, x in zip(("a", "g", "h"), out):
        if x is not None:
            _check_finite(x, name)
    if a.shape[0] < 1:
        raise ValueError("a has no calibration rows (n = 0)")
    return out


def _check_fold_rows(n: int, r: int, d: int) -> None:
    if int(r) < 1:
        raise ValueError(f"r (parents per folded unit) must be >= 1; got {r}")
    need = int(r) * d + 1
    if n < need:
        raise ValueError(
            f"folding needs at least r * d_unit + 1 = {need} calibration rows (r = {r} parents "
            f"of d_unit = {d} coordinates each, plus the intercept); got n = {n}"
        )


# ------------------------------------------------------------------------------- scores


@eqx.filter_jit
def _constant_core(a, g, h, damping, *, damped: bool, clip: bool):
    n = a.shape[0]
    H, G = h.sum(0), g.sum(0)
    HA = (h * a).sum(0)
    mean = a.mean(0)
    if damped:
        kappa = damping * jnp.median(jnp.abs(H))
        denom = jnp.maximum(H, 0.0) + kappa
        safe = denom > 0
        c = jnp.where(safe, (HA - G + kappa * mean) / jnp.where(safe, denom, 1.0), mean)
    else:
        safe = H > _H_FLOOR
        c = jnp.where(safe, (HA - G) / jnp.where(safe, H, 1.0), mean)
    if clip:
        c = jnp.clip(c, a.min(0), a.max(0))
    delta = c - a
    q = (g * delta + 0.5 * h * delta**2).sum(0) / n
    return q.sum(-1), c


def constant_scores(
    a: Float[ArrayLike, "n n_units d_unit"],
    g: Float[ArrayLike, "n n_units d_unit"],
    h: Float[ArrayLike, "n n_units d_unit"],
    *,
    damping: float | None = 10.0,
    clip: bool = True,
) -> tuple[Float[Array, " n_units"], Float[Array, "n_units d_unit"]]:
    """Predicted risk increase of replacing each unit by its best constant, and the constant
    (Asiaee 2026, arXiv 2602.24266).

    Returns `(score [n_units], c [n_units, d_unit])`, `score = (1/n) Σ_n Σ_e [g δ + ½ h δ²]`
    with `δ = c − a`. `damping=None, clip=False` is the closed form `c* = (HA − G)/H`, score
    `Q*/n`; the default damps the Newton step, `c = (HA − G + κ ā)/(H⁺ + κ)` with
    `κ = damping · median |H|`, and clips `c` to the observed range (see the module docstring).
    """
    a, g, h = _arrays(a, g, h)
    if damping is not None and not (np.isfinite(damping) and damping >= 0):
        raise ValueError(f"damping must be a finite number >= 0 or None; got {damping}")
    d = jnp.asarray(0.0 if damping is None else damping, jnp.float32)
    return _constant_core(a, g, h, d, damped=damping is not None, clip=bool(clip))


def variance_scores(
    a: Float[ArrayLike, "n n_units d_unit"],
) -> tuple[Float[Array, " n_units"], Float[Array, "n_units d_unit"]]:
    """Variance pruning, the uniform-curvature special case (Asiaee 2026):
    `(score = Σ_e Var(a_je) [n_units], c = mean [n_units, d_unit])`."""
    (a, _, _) = _arrays(a)
    return a.var(0).sum(-1), a.mean(0)


def random_scores(n_units: int, key: PRNGKeyArray) -> Float[Array, " n_units"]:
    """Random pruning's scores: `n_units` uniform numbers in [0, 1) from `key`."""
    if int(n_units) < 1:
        raise ValueError(f"n_units must be >= 1; got {n_units}")
    return jax.random.uniform(key, (int(n_units),))


# --------------------------------------------------------------------------------- fold


class Fold(eqx.Module):
    """Each unit folded onto kept units other than itself (Asiaee 2026).

    Row `j` is unit `j` as `offset[j] + mix[j·d:(j+1)·d] @ a_flat` on up to `r` kept
    parents (for a kept unit: what removing it would cost). `parents [n_units, r]` with
    `valid [n_units, r]` (False where fewer than `r` kept units other than `j` exist), `score
    [n_units]` the predicted risk `(1/n) Σ_n Σ_e [½ h δ² (+ g δ when g is given)]`,
    `δ = â − a`.
    """

    offset: Float[Array, "n_units d_unit"]
    mix: Float[Array, "coords coords"]
    parents: Int[Array, "n_units r"]
    valid: Bool[Array, "n_units r"]
    score: Float[Array, " n_units"]

    def replacement(self, site: str, keep: Bool[ArrayLike, " n_units"]) -> Replacement:
        """The `Replacement` that folds every unit not in `keep` (use the `keep` the fold was
        computed with, so parents are kept)."""
        keep = jnp.asarray(keep, bool)
        d = self.offset.shape[1]
        offset = jnp.where(keep[:, None], 0.0, self.offset)
        mix = jnp.where(jnp.repeat(keep, d)[:, None], 0.0, self.mix)
        return Replacement(site, keep, offset, mix, jnp.where(keep, KEPT, FOLD).astype(jnp.int32))


def _weighted_ridge(X, y, w, h, g, col_valid, ridge):
    """One coordinate: `min Σ w (y − β − X γ)² + λ‖γ‖²` with weighted centring; returns
    `(γ [p], β, risk)`."""
    W = w.sum()
    xm = (w[:, None] * X).sum(0) / W
    ym = (w * y).sum() / W
    sw = jnp.sqrt(w)
    Xt = (X - xm) * sw[:, None] * col_valid
    yt = (y - ym) * sw
    gram = jnp.matmul(Xt.T, Xt, precision=_HIGHEST)
    n_valid = jnp.maximum(col_valid.sum(), 1.0)
    lam = ridge * jnp.maximum(jnp.trace(gram) / n_valid, 1e-30)
    reg = jnp.where(col_valid > 0, lam, 1.0)
    chol = jax.scipy.linalg.cho_factor(gram + jnp.diag(reg))
    gamma = jax.scipy.linalg.cho_solve(chol, jnp.matmul(Xt.T, yt, precision=_HIGHEST)) * col_valid
    beta = ym - xm @ gamma
    delta = beta + X @ gamma - y
    risk = (0.5 * h * delta**2 + g * delta).sum()
    return gamma, beta, risk


@eqx.filter_jit
def _fold_core(a, h, g, keep, ridge, *, r: int):
    n, u, d = a.shape
    r_eff = max(1, min(r, u - 1))
    # |Pearson| between units: the largest over their coordinate pairs
    z = a - a.mean(0)
    std = jnp.sqrt((z**2).mean(0))
    z = jnp.where(std > 0, z / jnp.where(std > 0, std, 1.0), 0.0).reshape(n, u * d)
    corr = jnp.abs(jnp.matmul(z.T, z, precision=_HIGHEST) / n).reshape(u, d, u, d).max(axis=(1, 3))
    candidate = keep[None, :] & ~jnp.eye(u, dtype=bool)
    corr = jnp.where(candidate, corr, -1.0)
    _, parents = jax.lax.top_k(corr, r_eff)  # [u, r_eff]
    valid = jnp.take_along_axis(candidate, parents, axis=1)

    def one(args):
        j, par, ok = args
        X = a[:, par, :].reshape(n, r_eff * d)
        col_valid = jnp.repeat(ok, d).astype(a.dtype)
        w = jnp.maximum(h[:, j, :], _W_FLOOR)
        fit = jax.vmap(_weighted_ridge, in_axes=(None, 1, 1, 1, 1, None, None))
        gamma, beta, risk = fit(X, a[:, j, :], w, h[:, j, :], g[:, j, :], col_valid, ridge)
        cols = (par[:, None] * d + jnp.arange(d)).reshape(-1)
        rows = jnp.zeros((d, u * d), a.dtype).at[:, cols].add(gamma)
        return beta, rows, risk.sum() / n

    batch = max(1, min(u, _CHUNK_ELEMENTS // max(1, n * r_eff * d * d)))
    xs = (jnp.arange(u), parents, valid)
    if batch >= u:  # one batch: a plain vmap compiles faster than a one-step lax.map
        offset, rows, score = jax.vmap(one)(xs)
    else:
        offset, rows, score = jax.lax.map(one, xs, batch_size=batch)
    return Fold(offset, rows.reshape(u * d, u * d), parents, valid, score)


def fold(
    a: Float[ArrayLike, "n n_units d_unit"],
    h: Float[ArrayLike, "n n_units d_unit"],
    keep: Bool[ArrayLike, " n_units"],
    *,
    g: Float[ArrayLike, "n n_units d_unit"] | None = None,
    r: int = 8,
    ridge: float = 1e-4,
) -> Fold:
    """Fold every unit onto its `r` most correlated kept units by curvature-weighted ridge
    regression (Asiaee 2026, arXiv 2602.24266; choices in the module
    docstring). One compiled program for every `keep` of the same shape."""
    a, g_, h = _arrays(a, g, h)
    n, u, d = a.shape
    keep = jnp.asarray(keep)
    if keep.shape != (u,):
        raise ValueError(f"keep must have shape [n_units] = ({u},); got {keep.shape}")
    _check_fold_rows(n, max(1, min(int(r), u - 1)), d)
    if not (np.isfinite(ridge) and ridge >= 0):
        raise ValueError(f"ridge must be a finite number >= 0; got {ridge}")
    g_ = jnp.zeros_like(a) if g_ is None else g_
    return _fold_core(a, h, g_, keep.astype(bool), jnp.float32(ridge), r=int(r))


# -------------------------------------------------------------------------------- prune


def _lowest(score, keep, k: int):
    """The mask of the `k` lowest-scored units among `keep` (ties by index)."""
    s = np.where(np.asarray(keep), np.asarray(score, np.float64), np.inf)
    order = np.argsort(s, kind="stable")[:k]
    out = np.zeros(s.shape, bool)
    out[order] = True
    return out


def prune(
    a: Float[ArrayLike, "n n_units d_unit"],
    g: Float[ArrayLike, "n n_units d_unit"],
    h: Float[ArrayLike, "n n_units d_unit"],
    keep_fraction: float,
    *,
    site: str,
    method: str = "constant",
    schedule: str = "one-shot",
    block: int | None = None,
    rescore: Callable[[Replacement], tuple] | None = None,
    key: PRNGKeyArray | None = None,
    damping: float | None = 10.0,
    clip: bool = True,
    r: int = 8,
    ridge: float = 1e-4,
) -> Replacement:
    """Keep `round(keep_fraction · n_units)` units (at least one) of one site and replace the
    rest (Asiaee 2026, arXiv 2602.24266).

    `method`: `"constant"` (damped closed-form constants), `"fold"` (affine folds onto kept
    units), `"auto"` (per pruned unit, whichever of the two has the smaller predicted risk),
    `"variance"` (variance ranking, mean constants), `"random"` (needs `key`, mean constants).
    `schedule`: `"one-shot"` or `"iterative"` (`block` units per round, default a tenth of the
    units to remove, rounded up); `rescore(replacement) -> (a, g, h)` measures the site again
    on the model with the current replacement applied (see the module docstring). One-shot
    fold and auto prune the units with the lowest constant score.

    `g` and `h` come from `jaxcirc.solvers.unit_curvature` or any other source. With the KL to
    the full model as the loss (`g = 0`) the first-order term, which is mostly noise on data the
    network already fits, drops out; on the digits MLP that keeps more accuracy than the task
    cross-entropy (module docstring).
    """
    if method not in METHODS:
        raise ValueError(
            f"unknown method {method!r}; expected one of {METHODS}" + nearest(method, METHODS)
        )
    if schedule not in SCHEDULES:
        raise ValueError(
            f"unknown schedule {schedule!r}; expected one of {SCHEDULES}"
            + nearest(schedule, SCHEDULES)
        )
    kf = float(keep_fraction)
    if not (0.0 < kf <= 1.0):
        raise ValueError(f"keep_fraction must be in (0, 1]; got {keep_fraction}")
    if method == "random" and key is None:
        raise ValueError("method 'random' needs key= (a jax.random key)")
    if damping is not None and not (np.isfinite(damping) and damping >= 0):
        raise ValueError(f"damping must be a finite number >= 0 or None; got {damping}")
    a, g, h = _arrays(a, g, h)
    n, u, d = a.shape
    if method in ("fold", "auto"):
        _check_fold_rows(n, max(1, min(int(r), u - 1)), d)
    n_keep = min(u, max(1, int(round(kf * u))))
    n_remove = u - n_keep
    if block is None:
        block = max(1, math.ceil(n_remove / 10))
    if int(block) < 1:
        raise ValueError(f"block must be >= 1; got {block}")
    rand = random_scores(u, key) if method == "random" else None

    keep = np.ones(u, bool)
    offset = np.zeros((u, d), np.float32)
    mix = np.zeros((u * d, u * d), np.float32)
    kind = np.full(u, KEPT, np.int32)

    def current() -> Replacement:
        return Replacement(
            site, jnp.asarray(keep), jnp.asarray(offset), jnp.asarray(mix), jnp.asarray(kind)
        )

    def rank_scores(a, g, h):
        if method == "variance":
            return variance_scores(a)[0]
        if method == "random":
            return rand
        const = constant_scores(a, g, h, damping=damping, clip=clip)[0]
        if method == "constant" or schedule == "one-shot":
            return const
        folded = fold(a, h, keep, g=g, r=r, ridge=ridge).score
        return folded if method == "fold" else jnp.minimum(const, folded)

    rounds = [n_remove] if schedule == "one-shot" else []
    if schedule == "iterative":
        left = n_remove
        while left > 0:
            rounds.append(min(int(block), left))
            left -= rounds[-1]
    for i, k in enumerate(rounds):
        if i > 0 and rescore is not None:
            a, g, h = _arrays(*rescore(current()))
            if a.shape != (n, u, d):
                raise ValueError(f"rescore returned a of shape {a.shape}; expected {(n, u, d)}")
        removed = _lowest(rank_scores(a, g, h), keep, k)
        keep_new = keep & ~removed
        if method in ("variance", "random"):
            c = variance_scores(a)[1]
        else:
            const, c = constant_scores(a, g, h, damping=damping, clip=clip)
        new_off = np.asarray(c, np.float32)
        new_mix = np.zeros_like(mix)
        use_fold = np.zeros(u, bool)
        if method in ("fold", "auto"):
            f = fold(a, h, keep_new, g=g, r=r, ridge=ridge)
            use_fold = np.asarray(f.score) < np.asarray(const) if method == "auto" else ~use_fold
            new_off = np.where(use_fold[:, None], np.asarray(f.offset), new_off)
            new_mix = np.where(np.repeat(use_fold, d)[:, None], np.asarray(f.mix), 0.0)
        rem = np.repeat(removed, d)
        # substitute the removed units' replacements into earlier folds that use them
        via = mix[:, rem]
        offset = offset + (via @ new_off.reshape(-1)[rem]).reshape(u, d)
        mix = mix * ~rem[None, :] + via @ new_mix[rem]
        offset[removed] = new_off[removed]
        mix[rem] = new_mix[rem]
        kind[removed] = np.where(use_fold[removed], FOLD, CONSTANT)
        keep = keep_new
    return current()
