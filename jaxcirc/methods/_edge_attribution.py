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

Every score is linear in the metric, so prompts that do not fit `memory_budget` together run
in chunks when the metric is a mean over examples (`jaxcirc.metrics.is_example_mean`): one
compiled program per chunk, the metric replaced by the sum of its per-example values over the
chunk, the chunks' scores summed and divided by the batch size (`jaxcirc.patching._budget`).
Given `mesh=` (and `batch_axis=`), the prompts are split the same way over a mesh axis, each
device scoring its own and one all-reduce adding the sums (`jaxcirc._mesh`); the metric must
then be a mean over examples.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jaxtyping import Array, Float, Int

from .. import _mesh
from ..graph import Graph, Scores, ablation_values, graph, source_outputs
from ..graph._masked import check_ablation, run_graph
from ..metrics import is_example_mean
from ..metrics._check import check_metric
from ..patching import _budget
from ..patching._stable import stable
from ._discover import ScoringMethod
from ._task_args import task_arguments

Metric = Callable[[Float[Array, "batch seq d_vocab"]], Float[Array, ""]]
VARIANTS = ("inputs", "activations")


def _prepare(method, model, clean, corrupt, metric):
    clean, corrupt, metric = task_arguments(clean, corrupt, metric)
    g = graph(model)
    clean = model.check_tokens(clean, name="clean", ndim=2)
    check_metric(metric, (*clean.shape, model.cfg.d_vocab), differentiable=True)
    if method.mesh is not None:
        _mesh.check_mesh(method.mesh, method.batch_axis)
        _mesh.check_splittable(is_example_mean(metric), metric, type(method).__name__)
    metric = stable(metric)  # a fresh closure of the same code and values: the same program
    check_ablation(model, clean, corrupt, method.ablation)  # its checks, without running it
    corrupt = None if corrupt is None else jnp.asarray(corrupt)
    return g, clean, corrupt, metric


def _prompt_bytes(model, g: Graph, seq: int, runs: int, grad: bool) -> int:
    """Bytes one prompt keeps live: its ablated and clean source outputs, and `runs` masked
    forward passes (with what a backward pass keeps, and the input gradients, for `grad`)."""
    cfg = model.cfg
    sources = g.n_sources * seq * cfg.d_model
    run = sources + seq * (cfg.n_layers * (2 * cfg.n_heads * seq + 2 * cfg.d_mlp) + 2 * cfg.d_vocab)
    if grad:
        run = 2 * run + 2 * g.n_targets * seq * cfg.d_model
    return 4 * (2 * sources + runs * run)


def _ablated(model, g, tokens, corrupt, how, mean):
    """The ablated source outputs of a chunk: its corrupted rows' (`"corrupt"`), the
    corrupted batch's `mean`, or zero."""
    if how == "corrupt":
        return source_outputs(model, corrupt, g)
    if how == "mean":
        return jnp.broadcast_to(mean, (tokens.shape[0], *mean.shape))
    return ablation_values(model, tokens, None, how, g)


def _over_prompts(model, g, clean, corrupt, how, size, fn):
    """`fn(clean rows, their ablated outputs, rows, valid)` summed over chunks of `size`
    prompts and divided by the batch size."""
    mean = None
    if how == "mean":  # the mean over every corrupted prompt, in chunks
        n = corrupt.shape[0]
        sums = lambda r, v: _masked_outputs(model, g, jnp.take(corrupt, r, axis=0), v)
        mean = _budget.mean_over_prompts(sums, n, min(size, n))

    def run(rows, valid):
        tokens = jnp.take(clean, rows, axis=0)
        part = None if how != "corrupt" else jnp.take(corrupt, rows, axis=0)
        return fn(tokens, _ablated(model, g, tokens, part, how, mean), rows, valid)

    return _budget.mean_over_prompts(run, clean.shape[0], size)


def _over_mesh(method, model, g, clean, corrupt, per_prompt, engine):
    """`_over_prompts` with the prompts split over `method.batch_axis` of `method.mesh`
    (`jaxcirc._mesh`): `engine = (name in _ENGINES, its settings)`; each device runs as many
    prompts at once as fit `method.memory_budget` at `per_prompt` bytes each."""
    mesh, how, limit = method.mesh, method.ablation, _budget.budget(method.memory_budget)
    axes = _mesh.check_mesh(mesh, method.batch_axis)
    batch = clean.shape[0]
    size = _budget.prompts_per_chunk(-(-batch // _mesh.axis_size(mesh, axes)), per_prompt, limit)
    mean = None
    if how == "mean":  # the mean over every corrupted prompt, split the same way
        n = corrupt.shape[0]
        mean = _mesh.mean_over_mesh(_outputs_rows, (model, g), corrupt, n, size, mesh, axes)
    prompts = (clean, corrupt if how == "corrupt" else None)
    args = (model, g, how, mean, engine)
    return _mesh.mean_over_mesh(_engine_rows, args, prompts, batch, size, mesh, axes)


def _outputs_rows(args, corrupt, rows, valid):
    model, g = args
    return _masked_outputs(model, g, corrupt, valid)


def _engine_rows(args, prompts, rows, valid):
    """An engine's sums over the `valid` prompts of a device's chunk (`jaxcirc._mesh`)."""
    model, g, how, mean, (name, settings) = args
    tokens, corrupt = prompts
    ablated = _ablated(model, g, tokens, corrupt, how, mean)
    return _ENGINES[name](model, g, tokens, ablated, *settings, rows, valid)


@eqx.filter_jit
def _masked_outputs(model, g, tokens, valid):
    outs = source_outputs(model, tokens, g)
    return jnp.where(valid[:, None, None, None], outs, 0).sum(0)


def _reader(metric, rows, valid):
    """`metric`, or the sum of its per-example values over the valid `rows` of a chunk."""
    return metric if rows is None else _budget.example_reader(metric, rows, valid)


def _embed(model, tokens):
    return jax.vmap(lambda t: model.embed_tokens(t)[0])(tokens)


def _run(model, g, x0, weights, ablated, probe=None, tokens=None):
    """The masked runs of a batch; `tokens` (the runs' own) for a model's bigram table."""

    def one(x, a, p, t):
        return run_graph(model, g, x, weights, a, p, tokens=t)

    axes = (0, 0, None if probe is None else 0, None if tokens is None else 0)
    return jax.vmap(one, axes)(x0, ablated, probe, tokens)


def edge_patching(
    model,
    clean: Int[Array, "batch seq"],
    corrupt: Int[Array, "batch seq"] | None = None,
    metric: Metric | None = None,
    *,
    ablation: str = "corrupt",
    chunk_size: int = 64,
    memory_budget: int | None = None,
    mesh: Mesh | None = None,
    batch_axis: str | tuple[str, ...] | None = None,
) -> Scores:
    """Exact edge patching: `metric` with one edge ablated minus `metric` of the clean run.

    The slow reference the attribution methods approximate. One compiled program: edges are
    array indices, `chunk_size` of them vmapped at a time under `lax.map`; prompts chunked to
    fit `memory_budget` bytes (default 1 GiB) when the metric has a per-example form, and
    split over `batch_axis` of `mesh` when one is given (see the module docstring).
    """
    method = EdgePatching(
        ablation=ablation,
        chunk_size=chunk_size,
        memory_budget=memory_budget,
        mesh=mesh,
        batch_axis=batch_axis,
    )
    return method.scores(model, clean, corrupt, metric)


class EdgePatching(ScoringMethod):
    """Exact edge patching, one masked forward pass per edge (see `edge_patching`)."""

    ablation: str = "corrupt"
    chunk_size: int = 64
    memory_budget: int | None = None
    mesh: Mesh | None = eqx.field(default=None, static=True)
    batch_axis: str | tuple[str, ...] | None = eqx.field(default=None, static=True)

    def scores(self, model, clean, corrupt=None, metric=None) -> Scores:
        g, clean, corrupt, metric = _prepare(self, model, clean, corrupt, metric)
        edges = tuple(jnp.asarray(i) for i in np.nonzero(g.valid))
        chunk = int(self.chunk_size)
        batch, seq = clean.shape
        per_prompt = _prompt_bytes(model, g, seq, min(chunk, len(edges[0])), grad=False)
        limit = _budget.budget(self.memory_budget)
        if self.mesh is not None:
            engine = ("edge_patching", (metric, *edges, chunk))
            flat = _over_mesh(self, model, g, clean, corrupt, per_prompt, engine)
            size = None
        else:
            size = _budget.prompts_per_chunk(batch, per_prompt, limit, metric, what="edge_patching")
        if size == batch:
            ablated = ablation_values(model, clean, corrupt, self.ablation, g)
            flat = _edge_patching(model, g, clean, ablated, metric, *edges, chunk)
        elif size is not None:
            fn = lambda t, a, r, v: _edge_patching(model, g, t, a, metric, *edges, chunk, r, v)
            flat = _over_prompts(model, g, clean, corrupt, self.ablation, size, fn)
        return Scores.from_effects(jnp.zeros(g.valid.shape).at[np.nonzero(g.valid)].set(flat), g)


@eqx.filter_jit
def _edge_patching(model, g, clean, ablated, metric, src, dst, chunk, rows=None, valid=None):
    """Each edge's metric difference; given `rows` and `valid`, that of the sum of the
    metric's per-example values over the chunk's valid rows."""
    read = _reader(metric, rows, valid)
    x0 = _embed(model, clean)
    ones = jnp.ones(g.valid.shape)
    base = read(_run(model, g, x0, ones, ablated, tokens=clean)[0])

    def one(edge):
        i, j = edge
        return read(_run(model, g, x0, ones.at[i, j].set(0.0), ablated, tokens=clean)[0]) - base

    return jax.lax.map(one, (src, dst), batch_size=chunk)


def _input_gradients(model, g, x0, weights, ablated, metric, tokens=None):
    """`∂metric/∂(input of each target)`: `[batch, n_targets, seq, d_model]`."""

    def loss(probe):
        return metric(_run(model, g, x0, weights, ablated, probe, tokens)[0])

    return jax.grad(loss)(jnp.zeros((x0.shape[0], g.n_targets) + x0.shape[1:], x0.dtype))


def _scores(g, delta, grads) -> Float[Array, "n_sources n_targets"]:
    """Σ Δsource · ∂metric/∂target input, accumulated in float32 (a bfloat16 model's too)."""
    f32 = jnp.float32
    scores = jnp.einsum("bsld,btld->st", delta, grads, preferred_element_type=f32)
    return scores * jnp.asarray(g.valid, f32)


def eap(
    model,
    clean: Int[Array, "batch seq"],
    corrupt: Int[Array, "batch seq"] | None = None,
    metric: Metric | None = None,
    *,
    ablation: str = "corrupt",
    memory_budget: int | None = None,
    mesh: Mesh | None = None,
    batch_axis: str | tuple[str, ...] | None = None,
) -> Scores:
    """Edge attribution patching (Syed et al. 2023): every edge from one forward and backward;
    prompts split over `batch_axis` of `mesh` when one is given."""
    method = EAP(ablation=ablation, memory_budget=memory_budget, mesh=mesh, batch_axis=batch_axis)
    return method.scores(model, clean, corrupt, metric)


class EAPIG(ScoringMethod):
    """EAP-IG (Hanna et al. 2024), see `eap_ig`; `steps=1` is EAP."""

    steps: int = 5
    variant: str = "inputs"
    ablation: str = "corrupt"
    memory_budget: int | None = None
    mesh: Mesh | None = eqx.field(default=None, static=True)
    batch_axis: str | tuple[str, ...] | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choices: {VARIANTS}")
        if int(self.steps) < 1:
            raise ValueError(f"steps must be >= 1; got {self.steps}")

    def scores(self, model, clean, corrupt=None, metric=None) -> Scores:
        g, clean, corrupt, metric = _prepare(self, model, clean, corrupt, metric)
        batch, seq = clean.shape
        limit = _budget.budget(self.memory_budget)
        per_prompt = _prompt_bytes(model, g, seq, 1, grad=True)
        args = (int(self.steps), self.variant)
        if self.mesh is not None:
            engine = ("eap_ig", (metric, *args))
            values = _over_mesh(self, model, g, clean, corrupt, per_prompt, engine)
            size = None
        else:
            size = _budget.prompts_per_chunk(batch, per_prompt, limit, metric, what="eap")
        if size == batch:
            ablated = ablation_values(model, clean, corrupt, self.ablation, g)
            values = _eap_ig(model, g, clean, ablated, metric, *args)
        elif size is not None:
            fn = lambda t, a, r, v: _eap_ig(model, g, t, a, metric, *args, r, v)
            values = _over_prompts(model, g, clean, corrupt, self.ablation, size, fn)
        return Scores.from_effects(values, g)


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
    memory_budget: int | None = None,
    mesh: Mesh | None = None,
    batch_axis: str | tuple[str, ...] | None = None,
) -> Scores:
    """EAP-IG (Hanna et al. 2024): EAP with the gradient averaged along `steps` points.

    `variant="inputs"` interpolates the input embeddings from their ablated value (the
    corrupted prompt's, their mean, or zero) to the clean prompt's; `"activations"`
    interpolates the targets' inputs between their ablated and clean values, one place in
    the computation order at a time
    (`steps` × places gradients). The steps run as one compiled `lax.map`; the prompts are
    split over `batch_axis` of `mesh` when one is given.
    """
    method = EAPIG(
        steps=steps,
        variant=variant,
        ablation=ablation,
        memory_budget=memory_budget,
        mesh=mesh,
        batch_axis=batch_axis,
    )
    return method.scores(model, clean, corrupt, metric)


@eqx.filter_jit
def _eap_ig(model, g, clean, ablated, metric, steps, variant, rows=None, valid=None):
    """The signed edge values; given `rows` and `valid`, those of the sum of the metric's
    per-example values over the chunk's valid rows."""
    metric = _reader(metric, rows, valid)
    x_clean = _embed(model, clean)
    alphas = jnp.arange(1, steps + 1, dtype=x_clean.dtype) / steps
    if variant == "activations":
        return _activation_ig(model, g, x_clean, ablated, metric, alphas, clean)
    x_base = ablated[:, 0]  # the ablated embedding: corrupted, mean or zero
    ones = jnp.ones(g.valid.shape)

    def gradient_at(alpha):
        x0 = x_base + alpha * (x_clean - x_base)
        return _input_gradients(model, g, x0, ones, ablated, metric, clean)

    grads = jax.lax.map(gradient_at, alphas).mean(0, dtype=jnp.float32)
    clean_outs = _run(model, g, x_clean, ones, ablated, tokens=clean)[1]
    return _scores(g, ablated - clean_outs, grads)


def _activation_ig(model, g, x0, ablated, metric, alphas, tokens=None):
    """IG over activations, one layer at a time (as Marks et al. 2024 do for features): the
    inputs of the targets at one place in the computation order are set to
    `ablated + α (clean - ablated)`, everything downstream runs normally, and the gradient at
    those inputs is averaged over `α`. One `lax.map` over (place, α) pairs."""
    ones = jnp.ones(g.valid.shape)
    clean_outs = _run(model, g, x0, ones, ablated, tokens=tokens)[1]
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
            return metric(_run(model, g, x0, ones, ablated, probe * members, tokens)[0])

        return jax.grad(m)(-(1 - a) * gap) * members

    grads = jax.lax.map(gradient_at, (place, alpha)).sum(0, dtype=jnp.float32) / alphas.shape[0]
    return _scores(g, delta, grads)


_ENGINES = {"edge_patching": _edge_patching, "eap_ig": _eap_ig}  # for `_engine_rows`


def atp(
    model,
    clean: Int[Array, "batch seq"],
    corrupt: Int[Array, "batch seq"] | None = None,
    metric: Metric | None = None,
    *,
    ablation: str = "corrupt",
    memory_budget: int | None = None,
    mesh: Mesh | None = None,
    batch_axis: str | tuple[str, ...] | None = None,
) -> Scores:
    """Node attribution patching: `(a_s - z_s) · ∂m/∂z_s` for every source node `s`; prompts
    split over `batch_axis` of `mesh` when one is given."""
    method = AtP(ablation=ablation, memory_budget=memory_budget, mesh=mesh, batch_axis=batch_axis)
    return method.scores(model, clean, corrupt, metric)


class AtP(ScoringMethod):
    """Node attribution patching (Nanda 2023; Kramár et al. 2024): node-level `Scores`, a
    source's signed score the sum of its edges' EAP scores."""

    ablation: str = "corrupt"
    memory_budget: int | None = None
    mesh: Mesh | None = eqx.field(default=None, static=True)
    batch_axis: str | tuple[str, ...] | None = eqx.field(default=None, static=True)

    def scores(self, model, clean, corrupt=None, metric=None) -> Scores:
        method = EAP(
            ablation=self.ablation,
            memory_budget=self.memory_budget,
            mesh=self.mesh,
            batch_axis=self.batch_axis,
        )
        edges = method.scores(model, clean, corrupt, metric)
        return Scores.from_effects(edges.signed.sum(1), edges.graph)
