"""CircuitLasso on SAE features (Yin et al. 2026, arXiv 2606.16939, §3.3): feature circuits
from forward passes only, as a `Circuit` on the `FeatureGraph` of sparse feature circuits.

- Layer-wise feature circuits `A_{i,i+1}`: the codes of each SAE site regressed on those of the
  site before it, `min ‖Z_{i+1} − Z_i A‖² + λ‖A‖₁`, **pooled over positions** (every real
  (example, position) is one sample; a feature is one node whatever its position), solved by
  `block_lasso` with the λ chosen as `circuit_lasso` chooses it (held-out error on a path,
  examples kept whole; or `"bic"` / a given `alpha`).
- The target regression `A_{L,y}`: the per-example metric regressed on the last site's codes at
  each example's last position (`feature_ranking`, squared loss; held-out λ).

Relevance flows back from the target: `r_L = |Â_{L,y}|`, `r_i = |A_{i,i+1}| r_{i+1}`; a node's
score is its relevance, an edge `u → d` scores `|A[u, d]| r_d` (to the metric: `r_L`), and the
circuit is the nodes with non-zero relevance. Clean and patch prompts are both samples, so the
metric varies (the logit difference changes sign with the subject's number).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .._finite import check_finite
from ..graph import Circuit, Scores
from ..graph._features import FeatureGraph, feature_node
from ..sae import SAE, splice
from ._circuit_lasso import block_lasso, feature_ranking
from ._feature_circuit import _sorted
from ._feature_effects import call_metric, check_metric_arity, check_saes, position_mask, site_codes


def feature_lasso(
    model,
    saes: SAE | Sequence[SAE],
    tokens,
    metric: Callable,
    *,
    patch=None,
    metric_args=None,
    lengths=None,
    alpha: float | None = None,
    select: str | None = None,
    n_alphas: int = 12,
    eps: float = 1e-2,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> Circuit:
    """CircuitLasso's feature circuit of `metric` (module docstring): a node-level `Circuit`
    on a `FeatureGraph` of the features active in the samples (summed-over-position nodes),
    `scores` their relevance, the mask those with non-zero relevance.

    `tokens` (and `patch` tokens of the same shape, appended as more samples) feed the
    regressions; `metric(spliced_model, tokens_row[, args_row])` is the per-example target.
    `alpha`/`select`/`n_alphas`/`eps`/`val_fraction`/`seed` choose λ of the layer-wise fits
    as in `block_lasso`. `info`: `"edges"` (an edge-level `Circuit` on the graph of the kept
    nodes), `"alphas"`, `"seconds"`.
    """
    start = time.perf_counter()
    saes = check_saes(model, saes)
    saes = tuple(saes[k] for k in _sorted(saes))
    check_metric_arity(metric, metric_args)
    tokens = model.check_tokens(tokens, name="tokens", ndim=2)
    batch, seq = tokens.shape
    valid = position_mask(tokens, lengths)
    args = metric_args
    if patch is not None:
        patch = model.check_tokens(patch, name="patch", ndim=2)
        if patch.shape != tokens.shape:
            raise ValueError(f"patch has shape {tuple(patch.shape)}; expected {tokens.shape}")
        tokens = jnp.concatenate([tokens, patch])
        valid = np.concatenate([valid, valid])
        if args is not None:
            args = jax.tree_util.tree_map(lambda a: jnp.concatenate([a, a]), args)
    n = tokens.shape[0]
    if n < 4:
        raise ValueError(f"feature_lasso needs at least 4 prompts (clean + patch); got {n}")
    y = np.asarray(_metric_values(model, saes, metric, tokens, args), np.float64)
    check_finite(y, "feature_lasso metric", axes=("example",))
    codes = [np.asarray(f, np.float32) for f, _ in site_codes(model, saes, tokens)]
    rows = valid.reshape(-1)
    active = [np.flatnonzero(np.abs(z.reshape(-1, z.shape[-1])[rows]).max(0) > 0) for z in codes]
    if any(a.size == 0 for a in active):
        empty = [s.site for s, a in zip(saes, active) if a.size == 0]
        raise ValueError(f"no feature of the SAEs at {empty} is active on these prompts")
    blocks = [z.reshape(-1, z.shape[-1])[rows][:, a] for z, a in zip(codes, active)]
    groups = np.repeat(np.arange(n), seq)[rows]
    L = len(saes)
    coefs, alphas = [], {}
    if L > 1:
        eye = np.eye(L - 1, dtype=bool)
        fit = block_lasso(
            {s.site: b for s, b in zip(saes[:-1], blocks[:-1])},
            {s.site: b for s, b in zip(saes[1:], blocks[1:])},
            eye, alpha=alpha, select=select, n_alphas=n_alphas, eps=eps,
            val_fraction=val_fraction, groups=groups, seed=seed,
        )  # fmt: skip
        alphas["layers"] = fit.alpha
        r0 = np.cumsum([0] + [b.shape[1] for b in blocks[:-1]])
        c0 = np.cumsum([0] + [b.shape[1] for b in blocks[1:]])
        coefs = [np.asarray(fit.coef[r0[i] : r0[i + 1], c0[i] : c0[i + 1]]) for i in range(L - 1)]
    last = np.asarray(valid).sum(1) - 1
    z_last = codes[-1][np.arange(n), last][:, active[-1]]
    rank = feature_ranking(z_last, y, loss="squared", n_alphas=n_alphas, eps=eps,
                           val_fraction=val_fraction, seed=seed)  # fmt: skip
    alphas["target"] = rank.alpha
    relevance = [None] * L
    relevance[-1] = np.abs(rank.coef[:, 0]).astype(np.float64)
    for i in range(L - 2, -1, -1):
        relevance[i] = np.abs(coefs[i]) @ relevance[i + 1]
    keys, values = [], []
    for s, a, r in zip(saes, active, relevance):
        keys += [(s.site, None, int(f)) for f in a]
        values.append(r)
    values = np.concatenate(values)
    g = FeatureGraph.of(keys, sites=[s.site for s in saes])
    lookup = {str(feature_node(*k)): v for k, v in zip(keys, values)}
    node_values = np.asarray([lookup[name] for name in g.sources], np.float32)
    scores = Scores(jnp.asarray(node_values), g)
    circuit = scores.above(0.0)
    kept = g.restrict(np.asarray(circuit.mask))
    edge_values = np.zeros((kept.n_sources, kept.n_targets), np.float32)
    index = {(s.site, int(f)): (i, j) for i, (s, a) in enumerate(zip(saes, active))
             for j, f in enumerate(a)}  # fmt: skip
    where = [index[(node.site, node.index)] for node in kept.source_nodes]
    site_of = np.asarray([w[0] for w in where], np.int64)
    col_of = np.asarray([w[1] for w in where], np.int64)
    for i in range(L):
        u = np.flatnonzero(site_of == i)
        if i == L - 1:
            edge_values[u, -1] = relevance[-1][col_of[u]]
            continue
        d = np.flatnonzero(site_of == i + 1)
        block = np.abs(coefs[i][np.ix_(col_of[u], col_of[d])]) * relevance[i + 1][col_of[d]]
        edge_values[np.ix_(u, d)] = block
    edge_values = np.where(kept.valid, edge_values, 0.0)
    edge_scores = Scores(jnp.asarray(edge_values), kept)
    edges = edge_scores.above(0.0)
    info = {"edges": edges, "alphas": alphas, "seconds": time.perf_counter() - start,
            "target": rank}  # fmt: skip
    return Circuit(circuit.mask, g, scores, info)


def _metric_values(model, saes, metric, tokens, args):
    spliced = splice(model, saes)

    @jax.jit
    def run(tokens, args):
        return jax.vmap(lambda t, a: call_metric(metric, spliced, t, a))(tokens, args)

    return run(tokens, args)
