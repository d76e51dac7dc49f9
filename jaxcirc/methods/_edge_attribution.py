"""Edge scores on the computational graph: exact edge patching and attribution patching.

Each is a method value (`EdgePatching()`, `EAP()`, `EAPIG(steps=5)`, `AtP()`) for
`jaxcirc.methods.discover`, and a function `method(model, clean, corrupt, metric, ...) ->
Scores` (or `method(model, task)`). The signed score of edge `s -> t` (`Scores.signed`)
estimates `metric(edge ablated) - metric(clean)` (negative: the edge helps the metric); its
magnitude is the score. `metric` maps batched logits `[batch, seq, d_vocab]` to a scalar.

- `edge_patching`: that difference, exactly, one masked forward pass per edge, vmapped.
- `eap`: edge attribution patching (Syed et al. 2023, "Attribution Patching Outperforms
  Automated Circuit Discovery"): `(a_s - z_s) · ∂m/∂x_t` at the clean run, all edges from one
  forward and one backward pass (`a_s` the ablated output of `s`, `z_s` its clean output,
  `x_t` the input of `t`).
- `eap_ig`: EAP with integrated gradients (Hanna et al. 2024, "Have Faith in Faithfulness"):
  the gradient averaged over `steps` points of a path from the corrupted to the clean run;
  `"inputs"` interpolates the input embeddings (the paper's EAP-IG), `"activations"` the
  inputs of the targets, one place in the computation order at a time. A right Riemann sum,
  `α = 1/m, …, 1`, so `steps=1` is EAP.
- `atp`: node attribution patching (Nanda 2023; Kramár et al. 2024, "AtP*"): a source's
  score is the sum of its edges' EAP scores, returned as a `NodeMask`.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ..graph import Scores, ablation_values, graph
from ..graph._masked import run_graph
from ..metrics._check import check_metric
from ._discover import ScoringMethod
from ._task_args import task_arguments

Metric = Callable[[Float[Array, "batch seq d_vocab"]], Float[Array, ""]]
VARIANTS = ("inputs", "activations")


def _prepare(model, clean, corrupt, metric, ablation):
    clean, corrupt, metric = task_arguments(clean, corrupt, metric)
    g = graph(model)
    clean = model.check_tokens(clean, name="clean", ndim=2)
    check_metric(metric, (*clean.shape, model.cfg.d_vocab), differentiable=True)
    ablated = ablation_values(model, clean, corrupt, ablation, g)
    return g, clean, ablated, metric


def _embed(model, tokens):
    return jax.vmap(lambda t: model.embed_tokens(t)[0])(tokens)


def _run(model, g, x0, weights, ablated, probe=None):
    def one(x, a, p):
        return run_graph(model, g, x, weights, a, p)

    return jax.vmap(one, (0, 0, None if probe is None else 0))(x0, ablated, probe)


def edge_patching(
    model,
    clean: Int[Array, "batch seq"],
    corrupt: Int[Array, "batch seq"] | None = None,
    metric: Metric | None = None,
    *,
    ablation: str = "corrupt",
    chunk_size: int = 64,
) -> Scores:
    """Exact edge patching: `metric` with one edge ablated minus `metric` of the clean run.

    The slow reference the attribution methods approximate. One compiled program: edges are
    array indices, `chunk_size` of them vmapped at a time under `lax.map`.
    """
    return EdgePatching(ablation=ablation, chunk_size=chunk_size).scores(
        model, clean, corrupt, metric
    )


class EdgePatching(ScoringMethod):
    """Exact edge patching, one masked forward pass per edge (see `edge_patching`)."""

    ablation: str = "corrupt"
    chunk_size: int = 64

    def scores(self, model, clean, corrupt=None, metric=None) -> Scores:
        g, clean, ablated, metric = _prepare(model, clean, corrupt, metric, self.ablation)
        rows, cols = (jnp.asarray(i) for i in np.nonzero(g.valid))
        flat = _edge_patching(model, g, clean, ablated, metric, rows, cols, int(self.chunk_size))
        return Scores.from_effects(jnp.zeros(g.valid.shape).at[np.nonzero(g.valid)].set(flat), g)


@eqx.filter_jit
def _edge_patching(model, g, clean, ablated, metric, rows, cols, chunk):
    x0 = _embed(model, clean)
    ones = jnp.ones(g.valid.shape)
    base = metric(_run(model, g, x0, ones, ablated)[0])

    def one(edge):
        i, j = edge
        return metric(_run(model, g, x0, ones.at[i, j].set(0.0), ablated)[0]) - base

    return jax.lax.map(one, (rows, cols), batch_size=chunk)


def _input_gradients(model, g, x0, weights, ablated, metric):
    """`∂metric/∂(input of each target)`: `[batch, n_targets, seq, d_model]`."""

    def loss(probe):
        return metric(_run(model, g, x0, weights, ablated, probe)[0])

    return jax.grad(loss)(jnp.zeros((x0.shape[0], g.n_targets) + x0.shape[1:], x0.dtype))


def _scores(g, delta, grads) -> Scores:
    values = jnp.einsum("bsld,btld->st", delta, grads) * jnp.asarray(g.valid, delta.dtype)
    return Scores.from_effects(values, g)


def eap(
    model,
    clean: Int[Array, "batch seq"],
    corrupt: Int[Array, "batch seq"] | None = None,
    metric: Metric | None = None,
    *,
    ablation: str = "corrupt",
) -> Scores:
    """Edge attribution patching (Syed et al. 2023): every edge from one forward and backward."""
    return EAP(ablation=ablation).scores(model, clean, corrupt, metric)


class EAPIG(ScoringMethod):
    """EAP-IG (Hanna et al. 2024), see `eap_ig`; `steps=1` is EAP."""

    steps: int = 5
    variant: str = "inputs"
    ablation: str = "corrupt"

    def __check_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choices: {VARIANTS}")
        if int(self.steps) < 1:
            raise ValueError(f"steps must be >= 1; got {self.steps}")

    def scores(self, model, clean, corrupt=None, metric=None) -> Scores:
        g, clean, ablated, metric = _prepare(model, clean, corrupt, metric, self.ablation)
        return _eap_ig(model, g, clean, ablated, metric, int(self.steps), self.variant)


class EAP(EAPIG):
    """Edge attribution patching (Syed et al. 2023): EAP-IG with one step."""

    steps: int = eqx.field(default=1, init=False)
    variant: str = eqx.field(default="inputs", init=False)


def eap_ig(
    model,
    clean: Int[Array, "batch seq"],
    corrupt: Int[Array, "batch seq"] | None = None,
    metric: Metric | None = None,
    *,
    steps: int = 5,
    variant: str = "inputs",
    ablation: str = "corrupt",
) -> Scores:
    """EAP-IG (Hanna et al. 2024): EAP with the gradient averaged along `steps` points.

    `variant="inputs"` interpolates the input embeddings from their ablated value (the
    corrupted prompt's, their mean, or zero) to the clean prompt's; `"activations"`
    interpolates the targets' inputs between their ablated and clean values, one place in
    the computation order at a time
    (`steps` × places gradients). The steps run as one compiled `lax.map`.
    """
    method = EAPIG(steps=steps, variant=variant, ablation=ablation)
    return method.scores(model, clean, corrupt, metric)


@eqx.filter_jit
def _eap_ig(model, g, clean, ablated, metric, steps, variant):
    x_clean = _embed(model, clean)
    alphas = jnp.arange(1, steps + 1, dtype=x_clean.dtype) / steps
    if variant == "activations":
        return _activation_ig(model, g, x_clean, ablated, metric, alphas)
    x_base = ablated[:, 0]  # the ablated embedding: corrupted, mean or zero
    ones = jnp.ones(g.valid.shape)

    def gradient_at(alpha):
        x0 = x_base + alpha * (x_clean - x_base)
        return _input_gradients(model, g, x0, ones, ablated, metric)

    grads = jax.lax.map(gradient_at, alphas).mean(0)
    clean_outs = _run(model, g, x_clean, ones, ablated)[1]
    return _scores(g, ablated - clean_outs, grads)


def _activation_ig(model, g, x0, ablated, metric, alphas):
    """IG over activations, one layer at a time (as Marks et al. 2024 do for features): the
    inputs of the targets at one place in the computation order are set to
    `ablated + α (clean - ablated)`, everything downstream runs normally, and the gradient at
    those inputs is averaged over `α`. One `lax.map` over (place, α) pairs."""
    ones = jnp.ones(g.valid.shape)
    clean_outs = _run(model, g, x0, ones, ablated)[1]
    delta = ablated - clean_outs
    valid = jnp.asarray(g.valid, x0.dtype)
    # clean input minus ablated input of every target: Σ_s valid (z_s - a_s)
    gap = -jnp.einsum("st,bsld->btld", valid, delta)
    order = np.asarray(g.target_order)
    places = np.unique(order)
    groups = jnp.asarray(order[None, :] == places[:, None], x0.dtype)  # [places, targets]
    place, alpha = (
        x.reshape(-1) for x in jnp.meshgrid(jnp.arange(len(places)), alphas, indexing="ij")
    )

    def gradient_at(args):
        p, a = args
        members = groups[p][None, :, None, None]

        def m(probe):
            return metric(_run(model, g, x0, ones, ablated, probe * members)[0])

        return jax.grad(m)(-(1 - a) * gap) * members

    grads = jax.lax.map(gradient_at, (place, alpha)).sum(0) / alphas.shape[0]
    return _scores(g, delta, grads)


def atp(
    model,
    clean: Int[Array, "batch seq"],
    corrupt: Int[Array, "batch seq"] | None = None,
    metric: Metric | None = None,
    *,
    ablation: str = "corrupt",
) -> Scores:
    """Node attribution patching: `(a_s - z_s) · ∂m/∂z_s` for every source node `s`."""
    return AtP(ablation=ablation).scores(model, clean, corrupt, metric)


class AtP(ScoringMethod):
    """Node attribution patching (Nanda 2023; Kramár et al. 2024): node-level `Scores`, a
    source's signed score the sum of its edges' EAP scores."""

    ablation: str = "corrupt"

    def scores(self, model, clean, corrupt=None, metric=None) -> Scores:
        edges = EAP(ablation=self.ablation).scores(model, clean, corrupt, metric)
        return Scores.from_effects(edges.signed.sum(1), edges.graph)
