"""A penalised generalised linear problem `min_{W,b} f(XW + b) + alpha·g(W)`, in the form the
solvers consume: the smooth part is a function of the linear predictor `Z = XW + b`, so one
iteration costs exactly two matrix products (`X @ W` and `Xᵀ @ ∂f/∂Z`).

**Gram form** (squared loss only): the problem keeps `G = XᵀX/n`, `C = XᵀY/n` and
`‖Y‖²/n` instead of `X` and `Y`, and the solver's linear state is `Z = G W`, so one iteration
costs one `[d, d] @ [d, k]` product however many samples there are (what coordinate descent
calls "precompute"). Objective, gradient, duality gap and KKT residual are the same numbers,
computed from `G`, `C` and `‖Y‖²`."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ._prox import group_norms, group_soft_threshold, soft_threshold


class Problem(eqx.Module):
    """One (already preprocessed) problem. `X` is centred and `Y` is centred for the squared
    loss with an intercept (then `b` stays 0 during the solve and is recovered afterwards)."""

    X: Float[Array, "n d"]
    Y: Float[Array, "n k"]
    colmask: Bool[Array, " d"]
    groups: Int[Array, " d"] | None
    alpha_max: Float[Array, ""]
    b0: Float[Array, " k"]
    loss: str = eqx.field(static=True)
    penalty: str = eqx.field(static=True)
    n_groups: int = eqx.field(static=True)
    fit_b: bool = eqx.field(static=True)
    gram: bool = eqx.field(static=True, default=False)
    yy: Float[Array, ""] | None = None  # Gram form: ‖Y‖²_F / n

    @property
    def n(self) -> int:
        return self.X.shape[0]

    def linear(self, W: Float[Array, "d k"], b: Float[Array, " k"]) -> Float[Array, "n k"]:
        """The solver's linear state: `X W + b`, or `G W` in Gram form."""
        return self.X @ W if self.gram else self.X @ W + b

    # ------------------------------------------------------------ smooth part, in Z
    def value(self, Z: Float[Array, "n k"], W: Float[Array, "d k"]) -> Float[Array, ""]:
        n = self.n
        if self.gram:  # ½‖XW − Y‖²/n = ½ WᵀGW − WᵀC + ½‖Y‖²/n
            return jnp.sum(W * (0.5 * Z - self.Y)) + 0.5 * self.yy
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
    def penalty_value(self, W: Float[Array, "d k"]) -> Float[Array, ""]:
        if self.penalty == "l1":
            return jnp.sum(jnp.abs(W))
        return jnp.sum(group_norms(W, self.groups, self.n_groups))

    def prox(self, W: Float[Array, "d k"], t: Float[Array, ""]) -> Float[Array, "d k"]:
        if self.penalty == "l1":
            W = soft_threshold(W, t)
        else:
            W = group_soft_threshold(W, t, self.groups, self.n_groups)
        return jnp.where(self.colmask[:, None], W, 0.0)

    def dual_norm(self, G: Float[Array, "d k"]) -> Float[Array, ""]:
        """The dual norm of the penalty (`‖·‖_∞`, or the largest group norm)."""
        if self.penalty == "l1":
            return jnp.max(jnp.abs(G), initial=0.0)
        return jnp.max(group_norms(G, self.groups, self.n_groups), initial=0.0)

    def kkt_residual(self, W, gW, gb, alpha) -> Float[Array, ""]:
        """Distance of `-∇f` from `alpha·∂g(W)` (max over coefficients / groups) and `|∂f/∂b|`."""
        if self.penalty == "l1":
            res = jnp.where(
                W != 0, jnp.abs(gW + alpha * jnp.sign(W)), jnp.maximum(jnp.abs(gW) - alpha, 0.0)
            )
            res = jnp.max(res, initial=0.0)
        else:
            norms = group_norms(W, self.groups, self.n_groups)
            inv = jnp.where(norms > 0, 1.0 / jnp.where(norms > 0, norms, 1.0), 0.0)
            inv_rows = inv if self.groups is None else inv[self.groups]
            on = group_norms(gW + alpha * W * inv_rows[:, None], self.groups, self.n_groups)
            off = jnp.maximum(group_norms(gW, self.groups, self.n_groups) - alpha, 0.0)
            res = jnp.max(jnp.where(norms > 0, on, off), initial=0.0)
        return jnp.maximum(res, jnp.max(jnp.abs(gb), initial=0.0))

    def duality_gap(self, W, Z, gW, alpha) -> Float[Array, ""]:
        """Squared loss only: gap at the dual point `θ = s·r`, `s = min(1, α / ‖Xᵀr/n‖_*)`
        (the rescaled residual, as scikit-learn's coordinate descent); NaN otherwise."""
        if self.loss != "squared":
            return jnp.array(jnp.nan, Z.dtype)
        dn = self.dual_norm(gW)  # gW = -Xᵀr/n
        s = jnp.where(dn > alpha, alpha / jnp.where(dn > 0, dn, 1.0), 1.0)
        if self.gram:  # ‖r‖²/n and rᵀY/n from G, C and ‖Y‖²/n
            wc = jnp.sum(W * self.Y)
            rr = jnp.maximum(jnp.sum(W * Z) - 2 * wc + self.yy, 0.0)
            ry = self.yy - wc
        else:
            r = self.Y - Z
            rr = jnp.sum(r * r) / self.n
            ry = jnp.sum(r * self.Y) / self.n
        primal = 0.5 * rr + alpha * self.penalty_value(W)
        dual = s * ry - 0.5 * s * s * rr
        return primal - dual

    def column_lipschitz(self) -> Float[Array, ""]:
        """A lower bound on the Lipschitz constant: the largest column's curvature."""
        if self.gram:
            return jnp.max(jnp.diag(self.X), initial=0.0)
        col = jnp.max(jnp.sum(self.X * self.X, axis=0), initial=0.0)
        return self.curvature() * jnp.maximum(col, self.n if self.fit_b else 0.0) / self.n

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
