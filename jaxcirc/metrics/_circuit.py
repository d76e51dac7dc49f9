"""Scoring circuits: faithfulness, completeness, circuits from scores, ROC/AUROC and SHD.

Faithfulness is `(m(C) - m(∅)) / (m(M) - m(∅))` (Wang et al. 2023; Hanna et al. 2024):
`m(M)` the clean model, `m(∅)` every edge ablated, `m(C)` only the circuit's edges kept.
Completeness is `1 -` the faithfulness of the complement: the share of the behaviour lost
when the circuit alone is ablated. ROC and AUROC compare edge (or node) scores with a
ground-truth circuit (Conmy et al. 2023; Gupta et al. 2024, InterpBench); SHD counts the
edges in one circuit and not the other. Every function takes the results of discovery
methods (`Scores`, `Circuit`) as well as raw `EdgeMask`/`NodeMask` arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .._finite import check_finite
from ..graph import Circuit, EdgeMask, NodeMask, Scores, ablation_values, graph
from ..graph._masked import _masked_logits, _weights, nonfinite_ablated
from ._check import check_metric


def _edges(mask) -> EdgeMask:
    if isinstance(mask, Circuit):
        return EdgeMask(mask.to_edges().values, mask.graph)
    return mask.to_edges() if isinstance(mask, NodeMask) else mask


def _absolute(scores, absolute: bool | None) -> bool:
    """`Scores` are importances already (larger = more important); raw masks rank by `|x|`."""
    return not isinstance(scores, Scores) if absolute is None else absolute


def top_n(scores, n: int, *, absolute: bool | None = None):
    """The `n` valid edges (or nodes) of largest score: a `Circuit` for `Scores`, a 0/1 mask
    of the same type for an `EdgeMask`/`NodeMask` (ranked by `|score|` unless told)."""
    if isinstance(scores, Scores) and not absolute:
        return scores.top(n)
    absolute = _absolute(scores, absolute)
    if isinstance(scores, Scores):
        scores = type(scores)(jnp.abs(scores.values), scores.graph)
        return scores.top(n)
    values = np.asarray(scores.values, np.float64)
    valid = scores.graph.valid if isinstance(scores, EdgeMask) else scores.graph.node_valid
    key = np.where(valid, np.abs(values) if absolute else values, -np.inf)
    if not 0 <= n <= valid.sum():
        raise ValueError(f"n={n}: expected 0..{int(valid.sum())} (the number of valid units)")
    keep = np.zeros(values.size, np.float32)
    keep[np.argsort(-key, axis=None, kind="stable")[:n]] = 1.0
    return type(scores)(jnp.asarray(keep.reshape(values.shape)), scores.graph)


def above(scores, threshold: float, *, absolute: bool | None = None):
    """The valid edges (or nodes) whose score exceeds `threshold` (`Scores`: a `Circuit`;
    raw masks ranked by `|score|` unless told)."""
    if isinstance(scores, Scores):
        if absolute:
            scores = Scores(jnp.abs(scores.values), scores.graph)
        return scores.above(threshold)
    values = np.asarray(scores.values)
    valid = scores.graph.valid if isinstance(scores, EdgeMask) else scores.graph.node_valid
    keep = ((np.abs(values) if absolute else values) > threshold) & valid
    return type(scores)(jnp.asarray(keep, jnp.float32), scores.graph)


def faithfulness(
    model,
    clean: Int[Array, "batch seq"],
    corrupt: Int[Array, "batch seq"],
    metric: Callable,
    circuits: Circuit | EdgeMask | NodeMask | Sequence[Circuit | EdgeMask | NodeMask],
    *,
    ablation: str = "corrupt",
) -> Float[Array, ...]:
    """`(m(C) - m(∅)) / (m(M) - m(∅))` for one circuit, or for each of a list in one
    compiled `vmap` (the faithfulness-against-size curve)."""
    g = graph(model)
    single = not isinstance(circuits, (list, tuple))
    if not single and not circuits:
        raise ValueError("circuits is an empty list: give one circuit or a non-empty list")
    stack = jnp.stack([_weights(c, g) for c in ([circuits] if single else circuits)])
    clean = model.check_tokens(clean, name="clean", ndim=2)
    check_metric(metric, (*clean.shape, model.cfg.d_vocab))
    ablated = ablation_values(model, clean, corrupt, ablation, g)
    values, full, empty = _faithfulness(model, g, clean, ablated, metric, stack)
    full, empty = float(full), float(empty)
    diagnose = lambda: model.nonfinite_report(clean) or nonfinite_ablated(ablated, g)
    check_finite({"m(model)": full, "m(no edges)": empty}, "faithfulness", diagnose=diagnose)
    if full == empty:
        raise ValueError(
            f"faithfulness is undefined: the metric is {full} both with every edge and with "
            f"every edge ablated ({ablation!r}), so there is no behaviour to recover; use "
            "another metric or ablation"
        )
    check_finite(values, "faithfulness", axes=("circuit",), diagnose=diagnose)
    return values[0] if single else values


@eqx.filter_jit
def _faithfulness(model, g, clean, ablated, metric, stack):
    def m(weights):
        return metric(_masked_logits(model, g, clean, weights, ablated))

    # the full and empty graphs ride in the same vmap: one compiled forward, not three
    ends = jnp.stack([jnp.ones(g.valid.shape), jnp.zeros(g.valid.shape)]).astype(stack.dtype)
    out = jax.vmap(m)(jnp.concatenate([ends, stack]))
    full, empty, values = out[0], out[1], out[2:]
    scale = full - empty
    safe = jnp.where(scale == 0, 1.0, scale)
    return jnp.where(scale == 0, jnp.nan, (values - empty) / safe), full, empty


def completeness(model, clean, corrupt, metric, circuit, *, ablation: str = "corrupt"):
    """`1 - faithfulness(complement)`: the share of the behaviour lost when only the
    circuit's edges are ablated (1: the circuit carries all of it)."""
    edges = _edges(circuit)
    complement = EdgeMask(1.0 - edges.values, edges.graph)  # invalid cells are ignored
    return 1.0 - faithfulness(model, clean, corrupt, metric, complement, ablation=ablation)


def faithfulness_curve(model, clean, corrupt, metric, scores, sizes, *, ablation="corrupt"):
    """Faithfulness of the top-`n` circuits of `scores` for each `n` in `sizes` (one vmap)."""
    circuits = [top_n(scores, int(n)) for n in sizes]
    return faithfulness(model, clean, corrupt, metric, circuits, ablation=ablation)


def _truth(truth, g) -> EdgeMask:
    if isinstance(truth, (EdgeMask, NodeMask, Circuit)):
        return _edges(truth)
    return EdgeMask.from_edges(g, truth)


def roc(scores, truth, *, absolute: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`(fpr, tpr)` over every threshold of the valid edges' scores against `truth` (an
    `Circuit`, `EdgeMask` or `(source, target)` pairs), from (0, 0) to (1, 1)."""
    y, s = _labels(scores, truth, absolute)
    order = np.argsort(-s, kind="stable")
    y, s = y[order], s[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tps, fps = np.cumsum(y)[distinct], np.cumsum(1 - y)[distinct]
    pos, neg = max(y.sum(), 1), max((1 - y).sum(), 1)
    return np.r_[0.0, fps / neg], np.r_[0.0, tps / pos]


def _labels(scores, truth, absolute):
    g = scores.graph
    absolute = _absolute(scores, absolute)
    if isinstance(scores, NodeMask) or getattr(scores, "level", "edge") == "node":
        t = np.asarray(_truth(truth, g).values, bool).any(1)
        valid = g.node_valid
        y, s = t[valid], np.asarray(scores.values, np.float64)[valid]
    else:
        y = np.asarray(_truth(truth, g).values, bool)[g.valid]
        s = np.asarray(scores.values, np.float64)[g.valid]
    if y.all() or not y.any():
        raise ValueError("the ground truth must contain some but not all units for a ROC")
    return y.astype(np.float64), (np.abs(s) if absolute else s)


def auroc(scores, truth, *, absolute: bool | None = None) -> float:
    """Area under the ROC: the chance a true edge outscores a false one (ties count half)."""
    y, s = _labels(scores, truth, absolute)
    ranks = _average_ranks(s)
    pos = y.sum()
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * (y.size - pos)))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size)
    ranks[order] = np.arange(1, x.size + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, ranks)
    return (sums / counts)[inverse]


def node_scores(scores):
    """A source node's score: the largest score (`|score|` of a raw `EdgeMask`) of its
    outgoing edges."""
    if isinstance(scores, Scores):
        return scores.nodes()
    values = jnp.where(jnp.asarray(scores.graph.valid), jnp.abs(scores.values), 0.0).max(1)
    return NodeMask(values, scores.graph)


def shd(found, truth) -> int:
    """Structural Hamming distance: valid edges kept by one circuit and not the other."""
    found = _edges(found)
    t = np.asarray(_truth(truth, found.graph).values) > 0.5
    f = np.asarray(found.values) > 0.5
    return int(((t != f) & found.graph.valid).sum())
