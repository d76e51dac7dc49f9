"""Edge and node masks, and the forward pass that runs a model through them.

A masked forward pass gives each target the input
`Σ_s [w_st · out_s + (1 - w_st) · ablated_s] + biases` over the sources `s` before it, where
`out_s` is the source's output in this run and `ablated_s` its ablated value (from the
corrupted run, a mean, or zero). With all weights 1 it is the model; with all weights 0 it is
the model on the ablated values; weights in between interpolate, which is what attribution
methods differentiate and learned masks train (Syed et al. 2023; Conmy et al. 2023).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .._checks import nearest_word
from .._finite import check_finite, first_nonfinite
from ..models._scan import groups, stack_blocks
from ._circuit import Circuit
from ._graph import Graph, graph


class EdgeMask(eqx.Module):
    """Float weights `[n_sources, n_targets]` on the edges of `graph` (1 keeps, 0 ablates).

    Invalid cells (a source after its target) are ignored. Scores of edge methods come as an
    `EdgeMask` too, so thresholds, curves and ROC are written once.
    """

    values: Float[Array, "n_sources n_targets"]
    graph: Graph = eqx.field(static=True)

    def __check_init__(self):
        shape = (self.graph.n_sources, self.graph.n_targets)
        if tuple(self.values.shape) != shape:
            raise ValueError(f"EdgeMask values have shape {self.values.shape}; expected {shape}")

    @classmethod
    def ones(cls, g: Graph) -> EdgeMask:
        return cls(jnp.ones((g.n_sources, g.n_targets)), g)

    @classmethod
    def from_edges(cls, g: Graph, edges) -> EdgeMask:
        """1 on `edges` (pairs of source and target names), 0 elsewhere."""
        return cls(jnp.asarray(g.edge_array(edges), jnp.float32), g)

    def edges(self, threshold: float = 0.5) -> list[tuple[str, str]]:
        """The valid edges whose value exceeds `threshold`."""
        keep = (np.asarray(self.values) > threshold) & self.graph.valid
        return [(self.graph.sources[i], self.graph.targets[j]) for i, j in zip(*np.nonzero(keep))]

    def flat(self) -> Float[Array, " n_edges"]:
        """The values of the valid edges, in the order of `graph.edges()`."""
        return self.values[np.nonzero(self.graph.valid)]


class NodeMask(eqx.Module):
    """Float weights `[n_sources]` on source nodes; a node's weight applies to all its edges."""

    values: Float[Array, " n_sources"]
    graph: Graph = eqx.field(static=True)

    def __check_init__(self):
        if tuple(self.values.shape) != (self.graph.n_sources,):
            raise ValueError(
                f"NodeMask values have shape {self.values.shape}; "
                f"expected ({self.graph.n_sources},)"
            )

    def to_edges(self) -> EdgeMask:
        return EdgeMask(jnp.broadcast_to(self.values[:, None], self.graph.valid.shape), self.graph)


def _weights(mask, g: Graph) -> Float[Array, "n_sources n_targets"]:
    if isinstance(mask, Circuit):
        mask = EdgeMask(mask.to_edges().values, mask.graph)
    if isinstance(mask, NodeMask):
        mask = mask.to_edges()
    if not isinstance(mask, EdgeMask):
        raise TypeError(f"expected a Circuit, EdgeMask or NodeMask; got {type(mask).__name__}")
    if mask.graph != g:
        raise ValueError("the mask belongs to another graph (a different model structure)")
    return mask.values


class _MaskedWiring:
    """The `Wiring` of the masked forward pass: every input reads its mixture of sources.

    `targets` / `sources`: the block's input / output ports `(name, start, stop)`, offset by
    `t0` / `s0` (traced inside a scan over layers, where the ports are those of the first).
    """

    def __init__(self, ports, offsets, state, kept, base, ablated, probe):
        (self.targets, self.sources), (self.t0, self.s0) = ports, offsets
        self.outs, self.bias = state
        self.kept, self.base, self.ablated, self.probe = kept, base, ablated, probe

    def read(self, port: str) -> Float[Array, "n seq d_model"]:
        start, stop = _slot(self.targets, port)
        return self.inputs(self.t0 + start, stop - start)

    def inputs(self, start, size: int) -> Float[Array, "n seq d_model"]:
        take = lambda a, axis: jax.lax.dynamic_slice_in_dim(a, start, size, axis)
        mixed = jnp.einsum("st,sld->tld", take(self.kept, 1), self.outs - self.ablated)
        x = take(self.base, 0) + mixed + self.bias
        return x if self.probe is None else x + take(self.probe, 0)

    def write(self, output: str, values, bias=None) -> None:
        start, _ = _slot(self.sources, output)
        self.outs = jax.lax.dynamic_update_slice_in_dim(self.outs, values, self.s0 + start, 0)
        if bias is not None:
            self.bias = self.bias + bias


def _slot(ports, name: str) -> tuple[int, int]:
    for port, start, stop in ports:
        if port == name:
            return start, stop
    raise KeyError(f"the block has no port {name!r}; its ports: {[p for p, _, _ in ports]}")


def _ports(g: Graph, layer: int):
    return g.layer_targets[layer], g.layer_sources[layer]


def _shifted(ports, by: int):
    return tuple((name, start - by, stop - by) for name, start, stop in ports)


def _layer_runs(model, g: Graph) -> list[range]:
    """Block indices as runs that one `lax.scan` can run: with `model.scan`, consecutive
    blocks of one form (`jaxcirc.models.scan_layers`) whose ports repeat at a fixed stride;
    otherwise one block per run."""
    if not getattr(model, "scan", False):
        return [range(i, i + 1) for i in range(len(model.blocks))]
    runs = []
    for group in groups(model.blocks):
        for i in group:
            if i > group.start and _repeats(g, runs[-1], i):
                runs[-1] = range(runs[-1].start, i + 1)
            else:
                runs.append(range(i, i + 1))
    return runs


def _stride(g: Graph, a: int, b: int) -> tuple[int, int]:
    """How far block `b`'s input and output ports lie after block `a`'s."""
    return tuple(pb[0][1] - pa[0][1] for pa, pb in zip(_ports(g, a), _ports(g, b)))


def _repeats(g: Graph, run: range, layer: int) -> bool:
    """Whether block `layer` has the ports of `run`'s first block, shifted by the run's stride."""
    if not all(_ports(g, run.start)) or not all(_ports(g, layer)):
        return False
    stride = _stride(g, run.start, run.start + 1 if len(run) > 1 else layer)
    steps = layer - run.start
    return all(
        _shifted(here, steps * s) == first
        for first, here, s in zip(_ports(g, run.start), _ports(g, layer), stride)
    )


def _run_blocks(model, g: Graph, state, make_wiring, start, collect: bool = False):
    """Run every block's `split` form through `make_wiring(ports, offsets, state)`, each run of
    `_layer_runs` as one scan; blocks before `start` (may be traced) keep `state`. `collect`:
    also return the stream bias before each block `[n_layers + 1, d]` (the last: after all)."""

    def step(block, ports, offsets, layer, state):
        def run(state):
            wiring = make_wiring(ports, offsets, state)
            block.split(wiring)
            return wiring.outs, wiring.bias

        if isinstance(start, int) and start <= 0:
            return run(state)
        return jax.lax.cond(layer >= start, run, lambda s: s, state)

    biases = []
    for run in _layer_runs(model, g):
        if len(run) == 1:
            biases.append(state[1][None])
            state = step(model.blocks[run.start], _ports(g, run.start), (0, 0), run.start, state)
            continue
        first, stride = _ports(g, run.start), _stride(g, run.start, run.start + 1)
        base = tuple(p[0][1] for p in first)
        ports = tuple(_shifted(p, b) for p, b in zip(first, base))
        stacked, static = stack_blocks([model.blocks[i] for i in run])

        def body(state, xs, ports=ports, base=base, stride=stride, static=static, run=run):
            weights, layer = xs
            offsets = tuple(b + (layer - run.start) * s for b, s in zip(base, stride))
            return step(eqx.combine(weights, static), ports, offsets, layer, state), state[1]

        layers = jnp.arange(run.start, run.stop, dtype=jnp.int32)
        state, run_biases = jax.lax.scan(body, state, (stacked, layers))
        biases.append(run_biases)
    if collect:
        return state, jnp.concatenate(biases + [state[1][None]])
    return state


def check_wiring(model) -> None:
    """Refuse a model whose interventions the split form cannot honour, naming the sites."""
    sites = model.stream_interventions()
    if sites:
        raise ValueError(
            f"this model carries interventions on the summed residual stream at "
            f"{', '.join(sites)}; the edge graph gives every head and MLP its own input, so "
            f"there is no single stream for them to act on. Intervene inside a component "
            f"instead (attn.hook_z, attn.hook_q/k/v, mlp.hook_post, ln1/ln2 hook_normalized, "
            f"hook_embed), or remove them with jaxcirc.clear(model)"
        )


def run_graph(
    model,
    g: Graph,
    x0: Float[Array, "seq d_model"],
    weights: Float[Array, "n_sources n_targets"],
    ablated: Float[Array, "n_sources seq d_model"],
    probe: Float[Array, "n_targets seq d_model"] | None = None,
    *,
    start=0,
    state=None,
    positions=None,
    tokens=None,
) -> tuple[Float[Array, "seq d_vocab"], Float[Array, "n_sources seq d_model"]]:
    """The masked forward pass on one example from its embedding output `x0`.

    Each block runs its own `split` form (`jaxcirc.models`), reading through `weights`; on a
    model with scanned layers (`jaxcirc.models.scan_layers`, the default for loaded pretrained
    models) consecutive identical blocks run as one `lax.scan`, so a deep model compiles one
    block body.
    `probe` is added to every target's input (zeros by default): its gradient is the gradient
    of the output with respect to each target's input. `start` (may be traced) with `state`
    (`(outputs, bias)` of a run, e.g. from `graph_states`) resumes at block `start`: the
    blocks before it are skipped and their outputs taken from `state`. `positions`: unembed
    only these positions; `tokens`: the example's tokens, which a model with a bigram logit
    table reads (its `bigram[token]` term is a direct path no edge carries).
    **Returns:** `(logits, outputs)`, the outputs of every source.
    """
    check_wiring(model)
    seq, d = x0.shape
    valid = jnp.asarray(g.valid, x0.dtype)
    kept = weights.astype(x0.dtype) * valid
    if state is None:
        state = (jnp.zeros((g.n_sources, seq, d), x0.dtype).at[0].set(x0), jnp.zeros(d, x0.dtype))
    base = jnp.einsum("st,sld->tld", valid, ablated)  # what a fully ablated target reads

    make = lambda ports, offsets, st: _MaskedWiring(ports, offsets, st, kept, base, ablated, probe)
    state = _run_blocks(model, g, state, make, start)
    final = _MaskedWiring(((), ()), (0, 0), state, kept, base, ablated, probe)
    x = final.inputs(g.n_targets - 1, 1)[0]
    return model.logits_at(x, positions, tokens), state[0]


def graph_states(model, g: Graph, x0: Float[Array, "seq d_model"]):
    """The unmasked run's source outputs `[n_sources, seq, d]` and, per block boundary, the
    bias added to the stream so far `[n_layers + 1, d]`: the states `run_graph` resumes from."""
    check_wiring(model)
    seq, d = x0.shape
    ones = jnp.asarray(g.valid, x0.dtype)
    zeros = jnp.zeros((g.n_sources, seq, d), x0.dtype)
    no_base = jnp.zeros((g.n_targets, 1, 1), x0.dtype)
    make = lambda ports, offsets, st: _MaskedWiring(ports, offsets, st, ones, no_base, zeros, None)
    state = (zeros.at[0].set(x0), jnp.zeros(d, x0.dtype))
    (outs, _), biases = _run_blocks(model, g, state, make, 0, collect=True)
    return outs, biases


def source_outputs(model, tokens: Int[Array, "batch seq"], g: Graph | None = None):
    """Every source's output on each example of `tokens`: `[batch, n_sources, seq, d_model]`."""
    g = g or graph(model)
    return _source_outputs(model, g, model.check_tokens(tokens, ndim=2))


@eqx.filter_jit
def _source_outputs(model, g, tokens):
    return jax.vmap(lambda t: graph_states(model, g, model.embed_tokens(t)[0])[0])(tokens)


ABLATIONS = ("corrupt", "mean", "zero")


def check_ablation(model, clean, corrupt, how: str):
    """`(clean, corrupt)` checked for the ablation `how` (tokens, kind, shapes), eagerly and
    without running the model; `corrupt` is `None` for `"zero"`."""
    clean = model.check_tokens(clean, name="clean", ndim=2)
    if how == "zero":
        return clean, None
    if how not in ("corrupt", "mean"):
        raise ValueError(
            f"unknown ablation {how!r}{nearest_word(how, ABLATIONS)}; choices: {list(ABLATIONS)}"
        )
    if corrupt is None:
        raise TypeError(f"ablation {how!r} needs corrupt tokens [batch, seq]; got None")
    corrupt = model.check_tokens(corrupt, name="corrupt", ndim=2)
    if corrupt.shape[1:] != clean.shape[1:]:
        raise ValueError(
            f"corrupt tokens have shape {corrupt.shape}; expected [batch, {clean.shape[1]}] "
            f"like the clean tokens {clean.shape}"
        )
    if how == "corrupt" and corrupt.shape[0] != clean.shape[0]:
        raise ValueError(
            f"{corrupt.shape[0]} corrupt and {clean.shape[0]} clean prompts: corrupt ablation "
            f"pairs them one to one (use how='mean' for a mean over corrupt prompts)"
        )
    return clean, corrupt


def ablation_values(
    model, clean: Int[Array, "batch seq"], corrupt, how: str = "corrupt", g: Graph | None = None
) -> Float[Array, "batch n_sources seq d_model"]:
    """The ablated source outputs: `"corrupt"` (the corrupted run's, per example), `"mean"`
    (their mean over the corrupted batch) or `"zero"`."""
    g = g or graph(model)
    clean, corrupt = check_ablation(model, clean, corrupt, how)
    if how == "zero":
        d = model.cfg.d_model
        return jnp.zeros((clean.shape[0], g.n_sources, clean.shape[1], d), jnp.float32)
    outs = source_outputs(model, corrupt, g)
    if how == "mean":
        return jnp.broadcast_to(outs.mean(0), (clean.shape[0],) + outs.shape[1:])
    return outs


def masked_logits(
    model, tokens: Int[Array, "batch seq"], mask, ablated, g: Graph | None = None
) -> Float[Array, "batch seq d_vocab"]:
    """Logits of `model` on `tokens` with the edges of `mask` (a `Circuit`, `EdgeMask` or
    `NodeMask`) interpolated towards `ablated` (from `ablation_values`). One compiled program
    per shape."""
    g = g or graph(model)
    check_wiring(model)  # the model first: its interventions may not fit the split form
    tokens = model.check_tokens(tokens, ndim=2)
    ablated = jnp.asarray(ablated)
    want = (tokens.shape[0], g.n_sources, tokens.shape[1], model.cfg.d_model)
    if ablated.shape != want:
        raise ValueError(
            f"ablated has shape {list(ablated.shape)}; expected [batch, n_sources, seq, "
            f"d_model] = {list(want)} (from ablation_values(model, tokens, corrupt, how))"
        )
    logits = _masked_logits(model, g, tokens, _weights(mask, g), ablated)
    return check_finite(
        logits, "masked logits", axes=("row", "position", "vocab"),
        diagnose=lambda: model.nonfinite_report(tokens) or nonfinite_ablated(ablated, g),
    )  # fmt: skip


def nonfinite_ablated(ablated, g: Graph) -> str | None:
    """`"the ablated output of source L0H1 (row 0, position 2) is nan"`, or `None`."""
    index = first_nonfinite(ablated)
    if index is None:
        return None
    row, source, position = index[:3]
    value = np.asarray(ablated)[index].item()
    return (
        f"the ablated output of source {g.sources[source]} (row {row}, position {position}) "
        f"is {value}"
    )


@eqx.filter_jit
def _masked_logits(model, g, tokens, weights, ablated):
    def one(t, a):
        return run_graph(model, g, model.embed_tokens(t)[0], weights, a, tokens=t)[0]

    return jax.vmap(one)(tokens, ablated)
