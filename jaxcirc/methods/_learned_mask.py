"""Learned-mask pruning: edge or node masks trained with optax against a sparsity penalty.

Subnetwork probing (Cao et al. 2021) and the pruning of Gao et al. 2025 ("Weight-sparse
transformers have interpretable circuits"): each edge (or node) has a logit `θ`; the forward
pass uses the hard mask `H(θ) = [θ ≥ 0]`, and the backward pass the straight-through gradient
of `σ(θ / T)` (`H - stop_gradient(H - σ) `). The loss is the divergence from the clean model
plus `penalty` times the mean kept fraction. Pruned units carry their mean ablation by
default. All `steps` run in one compiled `lax.scan`.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int

from ..graph import EdgeMask, NodeMask, ablation_values, graph
from ..graph._masked import _masked_logits
from ._acdc import kl_divergence
from ._task_args import task_arguments

LEVELS = ("edge", "node")


class LearnedMaskResult(eqx.Module):
    """`circuit`: the hard mask (`EdgeMask`, or `NodeMask` for `level="node"`); `scores`: the
    learned logits `θ` (larger keeps), same structure; `losses`: `[steps]` training losses;
    `divergence`: of the final hard circuit."""

    circuit: EdgeMask | NodeMask
    scores: EdgeMask | NodeMask
    losses: Float[Array, " steps"]
    divergence: Float[Array, ""]


def hard_concrete_ste(theta: Array, temperature: float | Array) -> Array:
    """`[θ ≥ 0]` forward, `d σ(θ / T) / dθ` backward (straight-through)."""
    soft = jax.nn.sigmoid(theta / temperature)
    hard = (theta >= 0).astype(theta.dtype)
    return soft + jax.lax.stop_gradient(hard - soft)


def learned_mask(
    model,
    clean: Int[Array, "batch seq"],
    corrupt: Int[Array, "batch seq"] | None = None,
    *,
    level: str = "edge",
    penalty: float = 1.0,
    steps: int = 300,
    learning_rate: float = 0.05,
    temperature: float = 1.0,
    init: float = 1.0,
    ablation: str = "mean",
    divergence: Callable = kl_divergence,
) -> LearnedMaskResult:
    """Train an edge or node mask: `divergence(masked, clean) + penalty · mean(kept)`.

    `ablation`: `"mean"` (over `corrupt`, or over `clean` when `corrupt` is None),
    `"corrupt"` or `"zero"`. `init`: the starting logit (positive: start with everything kept).
    """
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; choices: {LEVELS}")
    if int(steps) < 1 or not float(penalty) >= 0 or not float(temperature) > 0:
        raise ValueError(
            f"need steps >= 1, penalty >= 0 and temperature > 0; got {steps}, {penalty}, "
            f"{temperature}"
        )
    if hasattr(clean, "clean"):  # a Task
        clean, corrupt, _ = task_arguments(clean, corrupt, None, needs_metric=False)
    g = graph(model)
    clean = jnp.asarray(clean)
    ablated = ablation_values(model, clean, clean if corrupt is None else corrupt, ablation, g)
    clean_logits = jax.vmap(model)(clean)
    shape = g.valid.shape if level == "edge" else (g.n_sources,)
    theta = jnp.full(shape, float(init))
    hyper = (jnp.asarray(x, jnp.float32) for x in (learning_rate, penalty, temperature))
    theta, losses, div = _train(
        model, g, clean, ablated, clean_logits, theta, divergence, *hyper, int(steps)
    )
    valid = jnp.asarray(g.valid if level == "edge" else g.valid.any(1), jnp.float32)
    hard = (theta >= 0).astype(jnp.float32) * valid
    if level == "edge":
        return LearnedMaskResult(EdgeMask(hard, g), EdgeMask(theta, g), losses, div)
    return LearnedMaskResult(NodeMask(hard, g), NodeMask(theta, g), losses, div)


def _weights(theta, g):
    return theta if theta.ndim == 2 else jnp.broadcast_to(theta[:, None], g.valid.shape)


@eqx.filter_jit
def _train(model, g, clean, ablated, clean_logits, theta, divergence, learning_rate, penalty,
           temperature, steps):  # fmt: skip
    optimiser = optax.adam(learning_rate)
    valid = jnp.asarray(g.valid if theta.ndim == 2 else g.valid.any(1), jnp.float32)

    def loss(theta):
        mask = hard_concrete_ste(theta, temperature)
        logits = _masked_logits(model, g, clean, _weights(mask, g), ablated)
        kept = (mask * valid).sum() / valid.sum()
        return divergence(logits, clean_logits) + penalty * kept

    def step(carry, _):
        theta, state = carry
        value, grad = jax.value_and_grad(loss)(theta)
        updates, state = optimiser.update(grad, state, theta)
        return (optax.apply_updates(theta, updates), state), value

    (theta, _), losses = jax.lax.scan(step, (theta, optimiser.init(theta)), None, length=steps)
    hard = (theta >= 0).astype(jnp.float32)
    final = divergence(_masked_logits(model, g, clean, _weights(hard, g), ablated), clean_logits)
    return theta, losses, final
