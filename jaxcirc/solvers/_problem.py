"""A penalised generalised linear problem `min_{W,b} f(XW + b) + alpha·g(W)`, in the form the
solvers consume: the smooth part is a function of the linear predictor `Z = XW + b`, so one
iteration costs exactly two matrix products (`X @ W` and `Xᵀ @ ∂f/∂Z`).

**Column scaling.** The columns of `X` are scaled to unit root-mean-square and the penalty is
weighted by the inverse scale (`alpha·Σ_j w_j |W_j|`, `w_j = 1/scale_j`), which is the same
problem in other coordinates. A first-order method's speed depends on the conditioning of
`XᵀX`; coordinate descent is blind to column scales, FISTA is not, so this diagonal
preconditioning is what keeps it competitive on columns of unequal scale.

**Gram form** (squared loss only): the problem keeps `G = XᵀX/n`, `C = XᵀY/n` and
`‖Y_t‖²/n` instead of `X` and `Y`, and the solver's linear state is `Z = G W`, so one iteration
costs one `[d, d] @ [d, k]` product however many samples there are (what coordinate descent
calls "precompute"). Objective, gradient, duality gap and KKT residual are the same numbers,
computed from `G`, `C` and `‖Y‖²`.

**Certificates in the working precision.** The duality gap is computed as a sum of terms that
each vanish at the optimum (`½(1−s)²‖r‖²/n + Σ_j (alpha·w_j|W_j| + s·W_j·g_j)`, `g = ∇f`),
never as the difference of the primal and dual objectives, which cancel. Its remaining error
comes from the rounding error of the gradient `g`, which `gradient_error` bounds from column
norms; `gap_floor` and `kkt_floor` turn that into the smallest gap / KKT residual the working
precision can certify (in float32 typically 1e-6 to 1e-4 of the objective; negligible in
float64)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ._prox import group_norms, group_soft_threshold, soft_threshold

# Safety factor over the rounding-error estimates of `gradient_error` (measured errors of
# float32 products on correlated data reach about 3x the unit estimate).
_ROUNDING_FACTOR = 8.0


class Problem(eqx.Module):
    """One (already preprocessed) problem. `X` is centred and `Y` is centred for the squared
    loss with an intercept (then `b` stays 0 during the solve and is recovered afterwards).
    `X`'s columns are scaled (see the module docstring); `weights` are the penalty weights
    `1/scale`, so coefficients here are `W_original · scale`."""

    X: Float[Array, "n d"]
    Y: Float[Array, "n k"]
    colmask: Bool[Array, " d"]
    groups: Int[Array, " d"] | None
    alpha_max: Float[Array, ""]
    b0: Float[Array, " k"]
    weights: Float[Array, " d"]
    diag: Float[Array, " d"]  # ‖X_j‖² / n (the diagonal of the Gram matrix)
    n_samples: int = eqx.field(static=True)
    loss: str = eqx.field(static=True)
    penalty: str = eqx.field(static=True)
    n_groups: int = eqx.field(static=True)
    fit_b: bool = eqx.field(static=True)
    gram: bool = eqx.field(static=True, default=False)
    # Gram form: `Z = G (W − W_ref)` and `Y = −∇f(W_ref)` (initially `W_ref = 0`, `Y = XᵀY/n`);
    # `yy` = `‖Y − X W_ref‖² / n` per target; `Xd`, `Yd` the data for `rebase`.
    yy: Float[Array, " k"] | None = None
    W_ref: Float[Array, "d k"] | None = None
    Xd: Float[Array, "n d"] | None = None
    Yd: Float[Array, "n k"] | None = None

    @property
    def n(self) -> int:
        return self.n_samples

    def linear(self, W: Float[Array, "d k"], b: Float[Array, " k"]) -> Float[Array, "n k"]:
        """The solver's linear state: `X W + b`, or `G (W − W_ref)` in Gram form."""
        return self.X @ (W - self.W_ref) if self.gram else self.X @ W + b

    @property
    def can_rebase(self) -> bool:
        return self.gram and self.Xd is not None

    def rebase(self, W: Float[Array, "d k"]) -> Problem:
        """Gram form: the same problem anchored at `W`, its gradient there computed from the
        data (`−Xᵀ(Y − XW)/n`). Later gradients are `G (W' − W) + ∇f(W)`: the product no longer
        cancels against `XᵀY/n`, so its rounding error shrinks with `‖W' − W‖` (iterative
        refinement of the gradient)."""
        r = self.Yd - self.Xd @ W
        g = -(self.Xd.T @ r) / self.n
        return eqx.tree_at(
            lambda p: (p.W_ref, p.Y, p.yy), self, (W, -g, jnp.sum(r * r, axis=0) / self.n)
        )

    # ------------------------------------------------------------ smooth part, in Z
    def value(self, Z: Float[Array, "n k"], W: Float[Array, "d k"]) -> Float[Array, ""]:
        n = self.n
        if self.gram:  # ½‖XW − Y‖²/n = ½ UᵀGU + Uᵀ∇f(W_ref) + f(W_ref), U = W − W_ref
            return jnp.sum((W - self.W_ref) * (0.5 * Z - self.Y)) + 0.5 * jnp.sum(self.yy)
        if self.loss == "squared":
            return 0.5 * jnp.sum((Z - self.Y) ** 2) / n
        if self.loss == "logistic":
            return jnp.sum(jax.nn.softplus(Z) - self.Y * Z) / n
        return jnp.sum(jax.nn.logsumexp(Z, axis=1) - jnp.sum(self.Y * Z, axis=1)) / n

    def value_change(self, Z, W, Z0, W0) -> Float[Array, ""]:
        """`f(W) − f(W0)`, without the cancellation of two large values in Gram form."""
        if self.gram:
            return jnp.sum((W - W0) * (0.5 * (Z + Z0) - self.Y))
        return self.value(Z, W) - self.value(Z0, W0)

    def dvalue(self, Z: Float[Array, "n k"]) -> Float[Array, "n k"]:
        n = self.n
        if self.loss == "squared":
            return (Z - self.Y) / n
        if self.loss == "logistic":
            return (jax.nn.sigmoid(Z) - self.Y) / n
        return (jax.nn.softmax(Z, axis=1) - self.Y) / n

    def curvature(self) -> float:
        """Bound on the second derivative of the per-sample loss in Z (Lipschitz factor)."""
        return {"squared": 1.0, "logistic": 0.25, "softmax": 0.5}[self.loss]

    def grads(self, Z):
        if self.gram:
            return Z - self.Y, jnp.zeros(Z.shape[1], Z.dtype)
        G = self.dvalue(Z)
        gW = self.X.T @ G
        gb = jnp.sum(G, axis=0) if self.fit_b else jnp.zeros(G.shape[1], G.dtype)
        return gW, gb

    # ------------------------------------------------------------ penalty
    def _row_weights(self):
        """Per-row penalty weights, or 1 where explicit groups forbid scaling."""
        return self.weights if self.groups is None else jnp.ones_like(self.weights)

    def penalty_value(self, W: Float[Array, "d k"]) -> Float[Array, ""]:
        if self.penalty == "l1":
            return jnp.sum(self.weights[:, None] * jnp.abs(W))
        if self.groups is None:
            return jnp.sum(self.weights * group_norms(W, None, self.n_groups))
        return jnp.sum(group_norms(W, self.groups, self.n_groups))

    def prox(self, W: Float[Array, "d k"], t: Float[Array, ""]) -> Float[Array, "d k"]:
        if self.penalty == "l1":
            W = soft_threshold(W, t * self.weights[:, None])
        elif self.groups is None:
            W = group_soft_threshold(W, t * self.weights, None, self.n_groups)
        else:
            W = group_soft_threshold(W, t, self.groups, self.n_groups)
        return jnp.where(self.colmask[:, None], W, 0.0)

    def dual_norms(self, G: Float[Array, "d k"]) -> Float[Array, ...]:
        """The weighted dual norm of the penalty: per target for `l1` (the targets are
        separate problems), one value for the group penalty."""
        if self.penalty == "l1":
            return jnp.max(jnp.abs(G) / self.weights[:, None], axis=0, initial=0.0)
        if self.groups is None:
            return jnp.max(group_norms(G, None, self.n_groups) / self.weights, initial=0.0)
        return jnp.max(group_norms(G, self.groups, self.n_groups), initial=0.0)

    def dual_norm(self, G: Float[Array, "d k"]) -> Float[Array, ""]:
        return jnp.max(self.dual_norms(G), initial=0.0)

    def kkt_residual(self, W, gW, gb, alpha) -> Float[Array, ""]:
        """Distance of `-∇f` from `alpha·∂g(W)` (max over coefficients / groups, in the
        original coordinates) and `|∂f/∂b|`."""
        if self.penalty == "l1":
            w = self.weights[:, None]
            res = jnp.where(
                W != 0,
                jnp.abs(gW + alpha * w * jnp.sign(W)),
                jnp.maximum(jnp.abs(gW) - alpha * w, 0.0),
            )
            res = jnp.max(res / w, initial=0.0)
        else:
            w = self._row_weights()
            norms = group_norms(W, self.groups, self.n_groups)
            inv = jnp.where(norms > 0, 1.0 / jnp.where(norms > 0, norms, 1.0), 0.0)
            inv_rows = inv if self.groups is None else inv[self.groups]
            scaled = gW + alpha * (w * inv_rows)[:, None] * W
            on = group_norms(scaled / w[:, None], self.groups, self.n_groups)
            off = jnp.maximum(group_norms(gW / w[:, None], self.groups, self.n_groups) - alpha, 0)
            res = jnp.max(jnp.where(norms > 0, on, off), initial=0.0)
        return jnp.maximum(res, jnp.max(jnp.abs(gb), initial=0.0))

    # ------------------------------------------------------------ certificates
    def residual_sq(self, W, Z) -> Float[Array, " k"]:
        """`‖r_t‖²/n` per target (squared loss)."""
        if self.gram:  # 2 f(W) per target: cancels, but only enters times (1 − s)²
            U = W - self.W_ref
            return jnp.maximum(jnp.sum(U * (Z - 2 * self.Y), 0) + self.yy, 0.0)
        r = self.Y - Z
        return jnp.sum(r * r, axis=0) / self.n

    def _dual_scale(self, gW, alpha):
        dn = self.dual_norms(gW)
        return jnp.where(dn > alpha, alpha / jnp.where(dn > 0, dn, 1.0), 1.0), dn

    def duality_gap(self, W, Z, gW, alpha) -> Float[Array, ""]:
        """Squared loss only: the gap at the dual point `θ = s·r`, `s = min(1, α/‖∇f‖_*)` (the
        rescaled residual, as scikit-learn's coordinate descent), per target for `l1`, in the
        cancellation-free form of the module docstring; NaN for the other losses."""
        if self.loss != "squared":
            return jnp.array(jnp.nan, Z.dtype)
        s, _ = self._dual_scale(gW, alpha)
        rr = self.residual_sq(W, Z)
        if self.penalty == "l1":
            terms = alpha * self.weights[:, None] * jnp.abs(W) + s * W * gW
            return jnp.sum(0.5 * (1 - s) ** 2 * rr) + jnp.sum(terms)
        w = self._row_weights()
        inner = jnp.sum(W * gW, axis=1)
        if self.groups is not None:
            inner = jax.ops.segment_sum(inner, self.groups, num_segments=self.n_groups)
            pen = group_norms(W, self.groups, self.n_groups)
        else:
            pen = w * group_norms(W, None, self.n_groups)
        return 0.5 * (1 - s) ** 2 * jnp.sum(rr) + jnp.sum(alpha * pen + s * inner)

    def gradient_error(self, W, Z) -> Float[Array, "d k"]:
        """An estimate of the rounding error of `∇f` in the working precision, per entry,
        times a safety factor. From the data: `ε·√G_jj·(‖r_t‖/√n + c·Σ_k √G_kk·|W_k| / √n)`
        (the product `Xᵀ ∂f/∂Z`, and the rounding of `Z = XW`, whose errors average out over
        the samples; `r` the residual, or `n·∂f/∂Z` for the other losses). Gram form: the worst
        case of the product `G (W − W_ref)` plus the data-form error of `∇f(W_ref)` (of
        `XᵀY/n` before any `rebase`)."""
        eps = jnp.finfo(W.dtype).eps
        root = jnp.sqrt(self.diag)

        def through(V):  # bounds Σ_k |G_jk V_k|
            return root[:, None] * (root @ jnp.abs(V))[None, :]

        sqrt_n = jnp.sqrt(jnp.asarray(self.n, W.dtype))
        if self.gram:
            err = through(W - self.W_ref) + root[:, None] * jnp.sqrt(self.yy)[None, :]
            err = err + through(self.W_ref) / sqrt_n
        else:
            D = self.dvalue(Z)
            err = root[:, None] * jnp.sqrt(self.n * jnp.sum(D * D, 0))[None, :]
            err = err + self.curvature() * through(W) / sqrt_n
        return _ROUNDING_FACTOR * eps * err

    def gap_floor(self, W, Z, gW, alpha) -> Float[Array, ""]:
        """The smallest duality gap the working precision can certify at `W`: the gap's
        sensitivity to the gradient's rounding error (`gradient_error`), through the terms
        `s·W·g` and through the dual scale `s`."""
        err = self.gradient_error(W, Z)
        s, dn = self._dual_scale(gW, alpha)
        if self.penalty == "l1":
            w = self.weights[:, None]
            rel_s = jnp.max(err / w, axis=0) / jnp.where(dn > 0, dn, 1.0)
            pen = jnp.sum(alpha * w * jnp.abs(W), axis=0)
            floor = jnp.sum(jnp.abs(W) * err) + jnp.sum(pen * rel_s)
        else:
            w = self._row_weights()
            gerr = group_norms(err / w[:, None], self.groups, self.n_groups)
            rel_s = jnp.max(gerr, initial=0.0) / jnp.where(dn > 0, dn, 1.0)
            floor = jnp.sum(jnp.abs(W) * err) + alpha * self.penalty_value(W) * rel_s
        return floor

    def kkt_floor(self, W, Z) -> Float[Array, ""]:
        """The smallest KKT residual the working precision can certify at `W`."""
        err = self.gradient_error(W, Z)
        if self.penalty == "l1":
            return jnp.max(err / self.weights[:, None], initial=0.0)
        w = self._row_weights()
        return jnp.max(group_norms(err / w[:, None], self.groups, self.n_groups), initial=0.0)

    # ------------------------------------------------------------ step size
    def column_lipschitz(self) -> Float[Array, ""]:
        """A lower bound on the Lipschitz constant: the largest column's curvature."""
        if self.gram:
            return jnp.max(self.diag, initial=0.0)
        col = jnp.max(self.diag, initial=0.0)
        return self.curvature() * jnp.maximum(col, 1.0 if self.fit_b else 0.0)

    def matvec_lipschitz(self, iters: int = 100, rtol: float = 1e-6) -> Float[Array, ""]:
        """`curvature · σ_max([X, 1])² / n` by power iteration on `X̃ᵀX̃` (×1.01 for safety)."""
        d = self.X.shape[1]
        dtype = self.X.dtype
        v0 = jnp.ones(d + 1, dtype) / jnp.sqrt(d + 1.0)
        v0 = v0 + 0.01 * jnp.cos(jnp.arange(d + 1, dtype=dtype))  # break symmetry

        def apply(v):
            if self.gram:
                return jnp.concatenate([self.X @ v[:d], jnp.zeros(1, dtype)])
            u = self.X @ v[:d] + (v[d] if self.fit_b else 0.0)
            tail = jnp.sum(u)[None] if self.fit_b else jnp.zeros(1, dtype)
            return jnp.concatenate([self.X.T @ u, tail])

        def cond(c):
            i, _, lam, lam_old = c
            return (i < iters) & (jnp.abs(lam - lam_old) > rtol * lam)

        def body(c):
            i, v, lam, _ = c
            w = apply(v)
            nw = jnp.linalg.norm(w)
            return i + 1, w / jnp.where(nw > 0, nw, 1.0), nw, lam

        v0 = v0 / jnp.linalg.norm(v0)
        one = jnp.array(1.0, dtype)
        _, _, lam, _ = jax.lax.while_loop(cond, body, (0, v0, one, 2 * one + 1))
        return 1.01 * self.curvature() * lam / (1 if self.gram else self.n)
