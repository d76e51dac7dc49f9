"""Sparse feature circuits (Marks et al. 2025, "Sparse feature circuits", arXiv 2403.19647).

`feature_circuit` finds the nodes (SAE features and error nodes at spliced sites) whose effect
on a metric exceeds a node threshold `T_N` (`jaxcirc.methods.feature_effects`, IG by default),
then the edges between kept nodes of adjacent sites whose effect exceeds `T_E`:

    IE(u → d) = ∇_d m · (∂d/∂u) · Δu,

one backward pass per kept downstream node `d` from `∇_d m · d` into the upstream site, with
the spliced sites between the two passed through a stop-gradient (so only the path through the
model between them counts), and the last site's nodes joined to the metric by their node
effects. Nodes are position-specific (`aggregation="none"`, Marks et al.'s choice for
agreement) or summed over positions (`"sum_positions"`); effects are means over examples.

`feature_faithfulness` scores a circuit as Marks et al. do: every feature and error node
outside it is replaced by its mean over the batch (per position), and
`faithfulness(C) = (m(C) − m(∅)) / (m(M) − m(∅))`; completeness is `1 −` the faithfulness of
the complement (the convention of `jaxcirc.metrics.completeness`; Marks et al. report the
complement's faithfulness itself). `identity_saes` gives the "neuron circuit" baseline: each
dimension of a site is a feature and there is no error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_float
from .._finite import check_finite
from .._progress import progress_bar, tick
from ..graph import Circuit, Scores
from ..graph._features import FeatureGraph, feature_node, site_order
from ..interventions import Function, intervene
from ..patching._budget import budget, prompts_per_chunk, row_chunks
from ..sae import SAE, Splice, splice
from ._feature_effects import (
    AGGREGATIONS,
    call_metric,
    check_saes,
    choice,
    node_pass,
    position_mask,
    site_codes,
)


class IdentitySAE(SAE):
    """The identity dictionary: `f = x`, no error (each dimension of the site a "neuron"
    node; Marks et al.'s neuron-circuit baseline). Build it with `identity_saes`."""

    architecture: str = eqx.field(static=True, init=False, default="identity")

    def encode(self, x):
        return self.pre(x)


def identity_saes(model, sites: Sequence[str]) -> tuple[IdentitySAE, ...]:
    """An `IdentitySAE` at each of `sites` (their width read from the model)."""
    from ..models._replacement import site_table

    table = site_table(model)
    out = []
    for site in sites:
        if site not in table:
            splice(model, jax_identity(1, site))  # the splice names the nearest site
        width = int(np.prod(table[site][1][1:]))
        out.append(jax_identity(width, site))
    return tuple(out)


def jax_identity(width: int, site: str) -> IdentitySAE:
    eye = jnp.eye(width, dtype=jnp.float32)
    zero = jnp.zeros(width, jnp.float32)
    return IdentitySAE(eye, zero, eye, zero, site=site, center=False)


def _sorted(saes):
    order = sorted(range(len(saes)), key=lambda i: site_order(saes[i].site))
    return order


@eqx.filter_jit
def _pair_edges(model, saes, i, j, stop, tokens, gf, ge, dfi, dei, down, up):
    """Per example: `[D, U]` edge effects from the kept nodes `up` of site `i` to the kept
    nodes `down` of site `j` (each `(kind, position, feature)` arrays; kind 1 = error,
    position −1 = all positions)."""
    seq = tokens.shape[-1]
    sae_j = saes[j]

    def one(t, gf, ge, dfi, dei):
        zf = [jnp.zeros((seq, s.d_sae)) for s in saes]
        ze = [jnp.zeros((seq, s.d_in)) for s in saes]

        def to_down(fa_i, ea_i):
            fa, ea = list(zf), list(ze)
            fa[i], ea[i] = fa_i, ea_i
            table = {s.site: Splice(s, feature_add=a, error_add=b) for s, a, b in zip(saes, fa, ea)}
            spliced = splice(model, table)
            if stop:
                spliced = intervene(spliced, {s: Function(jax.lax.stop_gradient) for s in stop})
            x = spliced.run(t)[1][sae_j.site].reshape(seq, -1)
            f = sae_j.encode(x)
            return f, x - sae_j.decode(f)

        _, vjp = jax.vjp(to_down, zf[i], ze[i])
        rows = jnp.arange(seq)

        def back(kind, pos, feat):
            at = (rows == pos) | (pos < 0)
            ct_f = jnp.where((kind == 0) & at[:, None] & (jnp.arange(sae_j.d_sae) == feat), gf, 0.0)
            ct_e = jnp.where((kind == 1) & at[:, None], ge, 0.0)
            gfa, gea = vjp((ct_f, ct_e))
            ef, ee = gfa * dfi, (gea * dei).sum(-1)
            kind_u, pos_u, feat_u = up
            p = jnp.clip(pos_u, 0, seq - 1)
            vf = jnp.where(pos_u < 0, ef[:, feat_u].sum(0), ef[p, feat_u])
            ve = jnp.where(pos_u < 0, ee.sum(), ee[p])
            return jnp.where(kind_u == 0, vf, ve)

        return jax.vmap(back)(*down)

    return jax.vmap(one)(tokens, gf, ge, dfi, dei)


def _node_arrays(nodes):
    kind = np.asarray([n.kind == "error" for n in nodes], np.int32)
    pos = np.asarray([-1 if n.position is None else n.position for n in nodes], np.int32)
    feat = np.asarray([0 if n.index is None else n.index for n in nodes], np.int32)
    return jnp.asarray(kind), jnp.asarray(pos), jnp.asarray(feat)


def feature_circuit(
    model,
    saes: SAE | Sequence[SAE],
    tokens,
    metric: Callable,
    *,
    patch=None,
    method: str = "ig",
    steps: int = 10,
    node_threshold: float = 0.1,
    edge_threshold: float = 0.01,
    aggregation: str = "none",
    edges: bool = True,
    lengths=None,
    metric_args=None,
    memory_budget: int | None = None,
    progress: bool = False,
) -> Circuit:
    """The sparse feature circuit of `metric` (Marks et al. 2025): a node-level `Circuit` on
    a `FeatureGraph` of every node with a non-zero effect, keeping those with `|IE| >
    node_threshold`; `scores` are the node effects (signed kept).

    `info` holds `"effects"` (the aggregated `FeatureEffects`), `"edges"` (an edge-level
    `Circuit` on the graph of the kept nodes, edges with `|IE| > edge_threshold`, its
    `scores` the signed edge effects; absent with `edges=False`), `"node_seconds"` and
    `"edge_seconds"`. The arguments before `node_threshold` are those of `feature_effects`;
    `progress` shows bars over the chunks of examples and the pairs of sites.
    """
    saes = check_saes(model, saes)
    order = _sorted(saes)
    saes = tuple(saes[k] for k in order)
    node_threshold = check_float(node_threshold, "node_threshold", 0.0)
    edge_threshold = check_float(edge_threshold, "edge_threshold", 0.0)
    aggregation = choice(aggregation, AGGREGATIONS, "aggregation")
    tokens = model.check_tokens(tokens, name="tokens", ndim=2)
    start = time.perf_counter()
    raw, grads, (df, de), _, _ = node_pass(
        model, saes, tokens, metric, patch=patch, method=method, steps=steps, lengths=lengths,
        metric_args=metric_args, memory_budget=memory_budget, progress=progress,
    )  # fmt: skip
    effects = raw.aggregate(aggregation)
    keys, values = effects.nodes(absolute=False)
    nonzero = np.flatnonzero(values != 0)
    g = FeatureGraph.of([keys[k] for k in nonzero], sites=[s.site for s in saes])
    lookup = {str(feature_node(*keys[k])): values[k] for k in nonzero}
    node_values = jnp.asarray([lookup[name] for name in g.sources], jnp.float32)
    scores = Scores.from_effects(node_values, g)
    circuit = scores.above(node_threshold)
    node_seconds = time.perf_counter() - start
    info = {"effects": effects, "node_seconds": node_seconds}
    if edges and method != "exact":
        start = time.perf_counter()
        kept = g.restrict(np.asarray(circuit.mask))
        with progress_bar(progress, total=len(saes) - 1, desc="edge effects", unit="site pair"):
            info["edges"] = _edges(model, saes, tokens, kept, grads, df, de, effects,
                                   edge_threshold, lengths, memory_budget)  # fmt: skip
        info["edge_seconds"] = time.perf_counter() - start
    return Circuit(circuit.mask, g, scores, info)


def _edges(model, saes, tokens, kept, grads, df, de, effects, edge_threshold, lengths, mem):
    """The edge-level circuit on the kept nodes' graph."""
    gf, ge = grads
    values = np.zeros((kept.n_sources, kept.n_targets), np.float32)
    by_site = [np.flatnonzero(kept.site_index == s) for s in range(len(saes))]
    batch, seq = tokens.shape
    cfg = model.cfg
    for i in range(len(saes) - 1):
        j = i + 1
        up, down = by_site[i], by_site[j]
        if not up.size or not down.size:
            tick()
            continue
        up_arr = _node_arrays([kept.source_nodes[k] for k in up])
        down_arr = _node_arrays([kept.source_nodes[k] for k in down])
        per_prompt = 4 * seq * (down.size * (saes[i].d_sae + saes[i].d_in)
                                + cfg.n_layers * cfg.d_model * 24)  # fmt: skip
        size = prompts_per_chunk(batch, per_prompt, budget(mem))
        total = np.zeros((down.size, up.size), np.float64)
        for rows, ok in zip(*row_chunks(batch, size)):
            out = _pair_edges(model, saes, i, j, (), tokens[rows], gf[j][rows], ge[j][rows],
                              df[i][rows], de[i][rows], down_arr, up_arr)  # fmt: skip
            total += np.asarray(out, np.float64)[ok].sum(0)
        values[np.ix_(up, down)] = (total / batch).T
        tick()
    last = np.flatnonzero(kept.site_index == len(saes) - 1)
    site = saes[-1].site
    s_last = effects.index(site)
    for k in last:
        n = kept.source_nodes[k]
        f, e = effects.features[s_last], effects.errors[s_last]
        if n.position is None:
            v = e if n.kind == "error" else f[n.index]
        else:
            v = e[n.position] if n.kind == "error" else f[n.position, n.index]
        values[k, -1] = float(v)
    values = np.where(kept.valid, values, 0.0)
    check_finite(values, "edge effects", names=kept.unit_name, valid=kept.valid)
    scores = Scores.from_effects(jnp.asarray(values), kept)
    return scores.above(edge_threshold)


# ----------------------------------------------------------------------------------------------
# faithfulness and completeness


def _node_mask(circuit) -> tuple[FeatureGraph, np.ndarray]:
    if not isinstance(circuit, Circuit) or not isinstance(circuit.graph, FeatureGraph):
        raise TypeError(
            "feature_faithfulness takes Circuits on a FeatureGraph (from feature_circuit or "
            f"Scores.top/above on its scores); got {type(circuit).__name__}"
        )
    mask = np.asarray(circuit.mask, bool)
    if mask.ndim == 2:  # an edge circuit: the nodes its kept edges join
        mask = mask & circuit.graph.valid
        mask = mask.any(1) | mask[:, :-1].any(0)
    return circuit.graph, mask


def keep_arrays(saes, seq: int, circuit) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per site, `[seq, d_sae]` feature and `[seq]` error 0/1 arrays: 1 where the circuit keeps
    the node (nodes of all positions kept at every position)."""
    g, mask = _node_mask(circuit)
    kf = {s.site: np.zeros((seq, s.d_sae), np.float32) for s in saes}
    ke = {s.site: np.zeros(seq, np.float32) for s in saes}
    for node in (n for n, m in zip(g.source_nodes, mask) if m):
        if node.site not in kf:
            raise ValueError(f"the circuit has a node at {node.site}, which has no SAE here")
        at = slice(None) if node.position is None else node.position
        if node.position is not None and not 0 <= node.position < seq:
            raise ValueError(f"node {node} is at position {node.position}; tokens have {seq}")
        if node.kind == "error":
            ke[node.site][at] = 1.0
        else:
            kf[node.site][at, node.index] = 1.0
    return [kf[s.site] for s in saes], [ke[s.site] for s in saes]


@eqx.filter_jit
def _ablated_metric(model, saes, metric, tokens, args, kf, ke, mf, me):
    """Mean metric over the batch for each stacked circuit (`kf[s]`: `[n, seq, d_sae]`)."""

    def for_circuit(keep):
        kf, ke = keep

        def one(t, a):
            table = {
                s.site: Splice(s, feature_keep=f, feature_value=vf, error_keep=e[:, None],
                               error_value=ve)
                for s, f, e, vf, ve in zip(saes, kf, ke, mf, me)
            }  # fmt: skip
            return call_metric(metric, splice(model, table), t, a)

        return jax.vmap(one)(tokens, args).mean()

    return jax.lax.map(for_circuit, (kf, ke))


def feature_faithfulness(
    model,
    saes: SAE | Sequence[SAE],
    tokens,
    metric: Callable,
    circuits: Circuit | Sequence[Circuit],
    *,
    ablation: str = "mean",
    complement: bool = False,
    lengths=None,
    metric_args=None,
):
    """`(m(C) − m(∅)) / (m(M) − m(∅))` for a node circuit on a `FeatureGraph` (or each of a
    list, one compiled program): the features and error nodes outside `C` replaced by their
    mean over the batch at each position (`ablation="mean"`, Marks et al.) or zero; `m` is
    the mean of `metric(spliced_model, tokens_row[, args_row])` over examples.
    `complement=True` scores `M \\ C` (completeness is one minus that).
    """
    saes = check_saes(model, saes)
    tokens = model.check_tokens(tokens, name="tokens", ndim=2)
    ablation = choice(ablation, ("mean", "zero"), "ablation")
    single = isinstance(circuits, Circuit)
    circuits = [circuits] if single else list(circuits)
    if not circuits:
        raise ValueError("circuits is empty: give one circuit or a non-empty list")
    seq = tokens.shape[1]
    valid = position_mask(tokens, lengths)
    codes = site_codes(model, saes, tokens)
    w = jnp.asarray(valid, jnp.float32)[..., None]
    count = jnp.maximum(w.sum(0), 1.0)
    if ablation == "mean":
        mf = [(f * w).sum(0) / count for f, _ in codes]
        me = [(e * w).sum(0) / count for _, e in codes]
    else:
        mf = [jnp.zeros(f.shape[1:]) for f, _ in codes]
        me = [jnp.zeros(e.shape[1:]) for _, e in codes]
    stacks = [keep_arrays(saes, seq, c) for c in circuits]
    kf = [np.stack([np.ones((seq, s.d_sae), np.float32), np.zeros((seq, s.d_sae), np.float32)]
                   + [st[0][k] for st in stacks]) for k, s in enumerate(saes)]  # fmt: skip
    ke = [np.stack([np.ones(seq, np.float32), np.zeros(seq, np.float32)]
                   + [st[1][k] for st in stacks]) for k in range(len(saes))]  # fmt: skip
    if complement:
        kf = [np.concatenate([k[:2], 1.0 - k[2:]]) for k in kf]
        ke = [np.concatenate([k[:2], 1.0 - k[2:]]) for k in ke]
    values = np.asarray(
        _ablated_metric(model, saes, metric, tokens, metric_args,
                        [jnp.asarray(k) for k in kf], [jnp.asarray(k) for k in ke], mf, me),
        np.float64,
    )  # fmt: skip
    full, empty = values[0], values[1]
    check_finite({"m(model)": full, "m(nothing)": empty}, "feature faithfulness")
    if full == empty:
        raise ValueError(
            f"faithfulness is undefined: the metric is {full} both with every node and with "
            f"every node {ablation}-ablated"
        )
    out = (values[2:] - empty) / (full - empty)
    check_finite(out, "feature faithfulness", axes=("circuit",))
    return float(out[0]) if single else out


def feature_completeness(model, saes, tokens, metric, circuit, **kwargs) -> float:
    """`1 − faithfulness(M \\ C)`: the share of the behaviour lost when only the circuit's
    nodes are ablated (Marks et al. report `faithfulness(M \\ C)` itself, ideally ≈ 0)."""
    return 1.0 - feature_faithfulness(model, saes, tokens, metric, circuit, complement=True,
                                      **kwargs)  # fmt: skip


def faithfulness_by_size(model, saes, tokens, metric, scores: Scores, sizes, **kwargs):
    """`(sizes, faithfulness)`: the circuits of the `n` nodes of largest `|effect|` for each `n`
    in `sizes` (the curve over node thresholds), error nodes counted as nodes."""
    sizes = [int(n) for n in sizes]
    circuits = [scores.top(min(n, scores.graph.n_sources)) for n in sizes]
    return np.asarray(sizes), feature_faithfulness(model, saes, tokens, metric, circuits, **kwargs)


def size_at(sizes, faithfulness, target: float) -> int | None:
    """The smallest size whose faithfulness reaches `target` (None if none does)."""
    hit = np.flatnonzero(np.asarray(faithfulness) >= target)
    return int(np.asarray(sizes)[hit[0]]) if hit.size else None
