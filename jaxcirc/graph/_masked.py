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
    if isinstance(mask, NodeMask):
        mask = mask.to_edges()
    if not isinstance(mask, EdgeMask):
        raise TypeError(f"expected an EdgeMask or NodeMask; got {type(mask).__name__}")
    if mask.graph != g:
        raise ValueError("the mask belongs to another graph (a different model structure)")
    return mask.values


def run_graph(
    model,
    g: Graph,
    x0: Float[Array, "seq d_model"],
    weights: Float[Array, "n_sources n_targets"],
    ablated: Float[Array, "n_sources seq d_model"],
    probe: Float[Array, "n_targets seq d_model"] | None = None,
) -> tuple[Float[Array, "seq d_vocab"], Float[Array, "n_sources seq d_model"]]:
    """The masked forward pass on one example from its embedding output `x0`.

    `probe` is added to every target's input (zeros by default): its gradient is the gradient
    of the output with respect to each target's input. **Returns:** `(logits, outputs)`, the
    outputs of every source in this run.
    """
    seq, d = x0.shape
    valid = jnp.asarray(g.valid, x0.dtype)
    kept = weights.astype(x0.dtype) * valid
    outs = jnp.zeros((g.n_sources, seq, d), x0.dtype).at[0].set(x0)
    bias = jnp.zeros((seq, d), x0.dtype)
    base = jnp.einsum("st,sld->tld", valid, ablated)  # what a fully ablated target reads

    def inputs(t, outs, bias):
        x = base[t] + jnp.einsum("st,sld->tld", kept[:, t], outs - ablated) + bias
        return x if probe is None else x + probe[t]

    def norm(ln, x):
        return jax.vmap(lambda y: ln(y)[0])(x)

    for layer, block in enumerate(model.blocks):
        q, k, v = g.qkv_targets(layer)
        if g.has_mlp:
            m = g.mlp_target(layer)
            mlp_in = inputs(slice(m, m + 1), outs, bias)[0] if g.parallel else None
        heads = block.attn.heads(
            norm(block.ln1, inputs(q, outs, bias)),
            norm(block.ln1, inputs(k, outs, bias)),
            norm(block.ln1, inputs(v, outs, bias)),
        )
        outs = outs.at[g.head_sources(layer)].set(heads)
        if block.attn.b_O is not None:
            bias = bias + block.attn.b_O
        if g.has_mlp:
            if not g.parallel:
                mlp_in = inputs(slice(m, m + 1), outs, bias)[0]
            mlp_out = block.mlp(block.ln2(mlp_in)[0])[0]
            outs = outs.at[g.mlp_source(layer)].set(mlp_out)
    final = inputs(slice(g.n_targets - 1, g.n_targets), outs, bias)[0]
    return model.readout(final)[0], outs


def source_outputs(model, tokens: Int[Array, "batch seq"], g: Graph | None = None):
    """Every source's output on each example of `tokens`: `[batch, n_sources, seq, d_model]`."""
    g = g or graph(model)
    return _source_outputs(model, g, jnp.asarray(tokens))


@eqx.filter_jit
def _source_outputs(model, g, tokens):
    def one(t):
        x0 = model.embed_tokens(t)[0]
        zeros = jnp.zeros((g.n_sources,) + x0.shape, x0.dtype)
        return run_graph(model, g, x0, jnp.ones((g.n_sources, g.n_targets)), zeros)[1]

    return jax.vmap(one)(tokens)


def ablation_values(
    model, clean: Int[Array, "batch seq"], corrupt, how: str = "corrupt", g: Graph | None = None
) -> Float[Array, "batch n_sources seq d_model"]:
    """The ablated source outputs: `"corrupt"` (the corrupted run's, per example), `"mean"`
    (their mean over the corrupted batch) or `"zero"`."""
    g = g or graph(model)
    clean = jnp.asarray(clean)
    if how == "zero":
        d = model.cfg.d_model
        return jnp.zeros((clean.shape[0], g.n_sources, clean.shape[1], d), jnp.float32)
    if how not in ("corrupt", "mean"):
        raise ValueError(f"unknown ablation {how!r}; choices: 'corrupt', 'mean', 'zero'")
    corrupt = jnp.asarray(corrupt)
    if corrupt.shape[1:] != clean.shape[1:]:
        raise ValueError(
            f"corrupt tokens have shape {corrupt.shape}; expected [batch, {clean.shape[1]}] "
            f"like the clean tokens {clean.shape}"
        )
    outs = source_outputs(model, corrupt, g)
    if how == "mean":
        return jnp.broadcast_to(outs.mean(0), (clean.shape[0],) + outs.shape[1:])
    if corrupt.shape[0] != clean.shape[0]:
        raise ValueError(
            f"{corrupt.shape[0]} corrupt and {clean.shape[0]} clean prompts: corrupt ablation "
            f"pairs them one to one (use how='mean' for a mean over corrupt prompts)"
        )
    return outs


def masked_logits(
    model, tokens: Int[Array, "batch seq"], mask, ablated, g: Graph | None = None
) -> Float[Array, "batch seq d_vocab"]:
    """Logits of `model` on `tokens` with the edges of `mask` (an `EdgeMask` or `NodeMask`)
    interpolated towards `ablated` (from `ablation_values`). One compiled program per shape."""
    g = g or graph(model)
    return _masked_logits(model, g, jnp.asarray(tokens), _weights(mask, g), ablated)


@eqx.filter_jit
def _masked_logits(model, g, tokens, weights, ablated):
    def one(t, a):
        return run_graph(model, g, model.embed_tokens(t)[0], weights, a)[0]

    return jax.vmap(one)(tokens, ablated)
