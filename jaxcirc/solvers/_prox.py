"""Proximal operators of the penalties used by the solvers (Parikh & Boyd 2014, §6.5)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def soft_threshold(x: Float[Array, ...], t: Float[Array, ""]) -> Float[Array, ...]:
    """`prox` of `t·‖x‖₁`: `sign(x)·max(|x| − t, 0)` elementwise."""
    return jnp.sign(x) * jnp.maximum(jnp.abs(x) - t, 0.0)


def group_norms(
    w: Float[Array, "d k"], groups: Int[Array, " d"] | None, n_groups: int
) -> Float[Array, " g"]:
    """Euclidean norm of each group of rows of `w` (one row per group when `groups` is None)."""
    sq = jnp.sum(w * w, axis=1)
    if groups is not None:
        sq = jax.ops.segment_sum(sq, groups, num_segments=n_groups)
    return jnp.sqrt(sq)


def group_soft_threshold(
    w: Float[Array, "d k"], t: Float[Array, ""], groups: Int[Array, " d"] | None, n_groups: int
) -> Float[Array, "d k"]:
    """`prox` of `t·Σ_g ‖w_g‖₂` (block soft-thresholding; rows are groups by default)."""
    norms = group_norms(w, groups, n_groups)
    safe = jnp.where(norms > 0, norms, 1.0)
    factor = jnp.where(norms > t, 1.0 - t / safe, 0.0)
    if groups is not None:
        factor = factor[groups]
    return w * factor[:, None]
