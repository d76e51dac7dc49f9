"""Learned-mask pruning: edge or node masks trained with optax against a sparsity penalty.

Subnetwork probing (Cao et al. 2021) and the pruning of Gao et al. 2025 ("Weight-sparse
transformers have interpretable circuits"): each edge (or node) has a logit `θ`; the forward
pass uses the hard mask `H(θ) = [θ ≥ 0]`, and the backward pass the straight-through gradient
of `σ(θ / T)` (`H - stop_gradient(H - σ) `). The loss is the divergence from the clean model
plus `penalty` times the mean kept fraction; by default the penalty is `AUTO_PENALTY` times the
divergence of the empty circuit, so keeping every unit costs that share of the behaviour.
The divergence's gradient vanishes at the full model, so equal starting logits would all cross
zero at the same step (the empty circuit): the start is jittered by a seeded uniform draw.
Pruned units carry their mean ablation by default. All `steps` run in one compiled `lax.scan`.
The method value is `LearnedMask(...)` (`jaxcirc.methods.discover`); `learned_mask(...)` is its
function form.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array

from .._checks import check_choices, check_float, check_int
from .._finite import check_finite
from ..graph import Circuit, Scores, ablation_values, graph
from ..graph._masked import ABLATIONS, _masked_logits, nonfinite_ablated
from ..metrics._check import check_metric
from ..metrics._divergence import kl_divergence
from ._discover import DiscoveryMethod
from ._task_args import task_arguments

LEVELS = ("edge", "node")
AUTO_PENALTY = 0.2
"""The default penalty, as a fraction of the empty circuit's divergence from the clean model."""


def hard_concrete_ste(theta: Array, temperature: float | Array) -> Array:
    """`[θ ≥ 0]` forward, `d σ(θ / T) / dθ` backward (straight-through)."""
    soft = jax.nn.sigmoid(theta / temperature)
    hard = (theta >= 0).astype(theta.dtype)
    return soft + jax.lax.stop_gradient(hard - soft)


class LearnedMask(DiscoveryMethod):
    """Train an edge or node mask: `divergence(masked, clean) + penalty · mean(kept)`.

    `ablation`: `"mean"` (over `corrupt`, or over `clean` when there is no `corrupt`),
    `"corrupt"` or `"zero"`. `penalty`: `None` (default) is `AUTO_PENALTY` times the empty
    circuit's divergence. `init`: the starting logit (positive: start with everything kept),
    jittered by `U(-jitter, jitter)` drawn from `seed`. The circuit is the hard mask; its
    scores are the learned logits `θ` (larger keeps); `info` holds `losses` (`[steps]`), the
    final circuit's `divergence` and the `penalty` used.
    """

    level: str = "edge"
    penalty: float | None = None
    steps: int = 300
    learning_rate: float = 0.05
    temperature: float = 1.0
    init: float = 1.0
    jitter: float = 0.5
    seed: int = 0
    ablation: str = "mean"
    divergence: Callable = kl_divergence

    def __check_init__(self):
        check_choices((self.level,), LEVELS, "level", one="level")
        check_choices((self.ablation,), ABLATIONS, "ablation", one="ablation")
        check_int(self.steps, "LearnedMask steps", 1)
        if self.penalty is not None:
            check_float(self.penalty, "LearnedMask penalty", 0.0)
        check_float(self.temperature, "LearnedMask temperature", 0.0, low_open=True)
        check_float(self.learning_rate, "LearnedMask learning_rate", 0.0, low_open=True)
        check_float(self.init, "LearnedMask init")
        check_float(self.jitter, "LearnedMask jitter", 0.0)
        check_int(self.seed, "LearnedMask seed", 0)
        if not callable(self.divergence):
            raise TypeError(
                f"divergence must be a function (logits, clean_logits) -> scalar such as "
                f"jaxcirc.metrics.kl_divergence; got {self.divergence!r}"
            )

    def __call__(self, model, clean, corrupt=None) -> Circuit:
        if hasattr(clean, "clean"):  # a Task
            clean, corrupt, _ = task_arguments(clean, corrupt, None, needs_metric=False)
        g = graph(model)
        clean = model.check_tokens(clean, name="clean", ndim=2)
        shape = (*clean.shape, model.cfg.d_vocab)
        check_metric(lambda x: self.divergence(x, x), shape, what="divergence")
        ablated = ablation_values(
            model, clean, clean if corrupt is None else corrupt, self.ablation, g
        )
        clean_logits = jax.vmap(model)(clean)
        shape = g.valid.shape if self.level == "edge" else (g.n_sources,)
        theta = float(self.init) + jax.random.uniform(
            jax.random.key(self.seed), shape, minval=-self.jitter, maxval=self.jitter
        )
        penalty = self.penalty
        if penalty is None:
            penalty = AUTO_PENALTY * _empty_divergence(
                model, g, clean, ablated, clean_logits, self.divergence
            )
        hyper = (jnp.asarray(x, jnp.float32)
                 for x in (self.learning_rate, penalty, self.temperature))  # fmt: skip
        theta, losses, div = _train(
            model, g, clean, ablated, clean_logits, theta, self.divergence, *hyper,
            int(self.steps),
        )  # fmt: skip
        check_finite(
            {"loss": losses, "divergence": div, "logits θ": theta}, "LearnedMask",
            axes={"loss": ("step",)}, names=None,
            diagnose=lambda: model.nonfinite_report(clean) or nonfinite_ablated(ablated, g),
        )  # fmt: skip
        info = {"losses": losses, "divergence": div, "penalty": jnp.asarray(penalty)}
        return Circuit(theta >= 0, g, Scores(theta, g), info)


def learned_mask(model, clean, corrupt=None, **hyperparameters) -> Circuit:
    """`LearnedMask(**hyperparameters)(model, clean, corrupt)`: the function form."""
    return LearnedMask(**hyperparameters)(model, clean, corrupt)


def _weights(theta, g):
    return theta if theta.ndim == 2 else jnp.broadcast_to(theta[:, None], g.valid.shape)


@eqx.filter_jit
def _empty_divergence(model, g, clean, ablated, clean_logits, divergence):
    """The divergence from the clean model with every unit ablated."""
    empty = jnp.zeros(g.valid.shape, jnp.float32)
    return divergence(_masked_logits(model, g, clean, empty, ablated), clean_logits)


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
