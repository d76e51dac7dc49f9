"""CircuitLasso: circuits from sparse regression on observational activations.

Yin et al. 2026, "Scalable Circuit Learning for Interpreting Large Language Models"
(CircuitLasso, ICML 2026 MI workshop, arXiv 2606.16939). Activations from forward passes only
are stacked in computation order (within a layer, attention before the MLP) and a linear SEM
`X = Aᵀ X + ε` is fitted with an ℓ1 penalty and `A` block upper-triangular: each target block is
regressed on the blocks computed before it. The block norms of `A` rank the edges.

- `block_lasso(blocks, ...)`: the regression on arrays (blocks of columns in computation
  order; sources may differ from targets).
- `circuit_lasso(model, clean, corrupt=None, ...)`: a model's components, raw units of given
  sites, or SAE features of them, mapped to the edges of `jaxcirc.graph.graph(model)`.
- `feature_ranking(features, y, ...)` and `target_lasso(model, tokens, y, site=...)`: the
  target-inclusive regression (a behaviour regressed on a site's features, squared or
  cross-entropy loss), with dataset-level (`|Â|`) and per-prompt (`|Â| ⊙ |z|`) rankings.

**Edges and targets (components).** A source's features are its output to the residual stream
(`jaxcirc.graph.source_outputs`: `embed`, `L{l}H{h}` without `b_O`, `MLP{l}`), one sample per
(example, position). A target's features are what it reads from the residual stream, linearly
projected by its own weights: `L{l}H{h}.q` / `.k` / `.v` the head's query, key and value vectors
(`hook_q`/`hook_k`/`hook_v`, before rotary), `MLP{l}` the MLP's pre-activations (`hook_pre`, and
`hook_pre_linear` for gated MLPs), `logits` the logits. So q, k and v get separate edges, as in
the graph. Target `t` is regressed on every source computed before it (`graph.valid[:, t]`);
the score of edge `s -> t` is the Frobenius norm of the coefficient block `A[s, t]`.

**Choosing λ.** One λ for all targets (columns are standardised, so λ is comparable), on a
geometric path from the smallest λ that zeroes everything. `select="heldout"` (the default, or
`"count"` when `n_edges` is given) picks the λ of least squared error on held-out examples
(a random `val_fraction` of the examples; all their positions); `"count"` the largest λ with at
least `n_edges` edges (the circuit is then the top `n_edges`); `"bic"` the least BIC. The final
coefficients are refitted on all samples at that λ. Edges absent at the chosen λ keep a tiny
score ordering them by how early they enter the path, so the ranking (AUROC) is total.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_choices, check_float, check_index, check_int
from ..graph import Circuit, Scores, graph
from ._discover import DiscoveryMethod

GRANULARITIES = ("components", "neurons", "sae")
SELECTIONS = ("heldout", "count", "bic")
HEAD_KINDS = ("q", "k", "v", "z")


# ----------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class BlockLassoResult:
    """The fitted block upper-triangular regression (`block_lasso`).

    - `block_scores`: `[n_sources, n_targets]` Frobenius norms of the coefficient blocks at
      the chosen λ (plus the tiny path-entry tie-break described in the module docstring).
    - `support`: `[n_sources, n_targets]` booleans, blocks non-zero at the chosen λ.
    - `coef`: `[n_source_columns, n_target_columns]` coefficients `A` (standardised units;
      zero rows/columns for dropped constant columns).
    - `alphas`: the λ path; `alpha`: the chosen λ; `index`: its place on the path (-1 when λ
      was given); `edge_counts`: edges per λ; `validation_error`: held-out mean squared error
      per λ (or None); `bic`: per λ (or None).
    - `dropped`: names `block[column]` of the zero-variance columns left out.
    """

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    block_scores: np.ndarray
    support: np.ndarray
    coef: np.ndarray
    alphas: np.ndarray
    alpha: float
    index: int
    select: str | None
    edge_counts: np.ndarray | None
    validation_error: np.ndarray | None
    bic: np.ndarray | None
    dropped: tuple[str, ...]
    n_samples: int


@dataclasses.dataclass(frozen=True)
class CircuitLassoResult:
    """`circuit_lasso`'s output.

    - `scores`: `Scores` of the edges of `graph(model)` (block norms; 0 where no block maps to
      an edge), ready for `jaxcirc.metrics` (`auroc`, `top_n`, `faithfulness`).
    - `circuit`: a `Circuit`, the edges non-zero at the chosen λ (top `n_edges` with
      `select="count"`), with those scores and the chosen `alpha` in its `info`.
    - `alphas`, `alpha`, `edge_counts`, `validation_error`, `bic`: the path and the choice.
    - `fit`: the underlying `BlockLassoResult` (block names, coefficients `A`, dropped columns).
    - `seconds`: wall time of `"collect"` (forward passes) and `"regress"`.
    """

    scores: Scores | None
    circuit: Circuit | None
    alphas: np.ndarray
    alpha: float
    edge_counts: np.ndarray | None
    validation_error: np.ndarray | None
    bic: np.ndarray | None
    fit: BlockLassoResult
    seconds: dict


@dataclasses.dataclass(frozen=True)
class FeatureRanking:
    """`feature_ranking`'s output: `coef` `[n_features, k]`, `intercept` `[k]`, `dataset`
    `[n_features]` (`‖Â_i‖` over outputs), `prompt` `[n_samples, n_features]` (`‖Â_i‖ · |z_i|`),
    `order` (features by decreasing `dataset`), `alpha` and the held-out `validation_loss` path."""

    coef: np.ndarray
    intercept: np.ndarray
    dataset: np.ndarray
    prompt: np.ndarray
    order: np.ndarray
    alpha: float
    alphas: np.ndarray | None
    validation_loss: np.ndarray | None


# ----------------------------------------------------------------------------- helpers


def _solvers():
    from .. import solvers

    return solvers


def _check_alpha(alpha):
    if alpha is None:
        return None
    a = float(alpha)
    if not np.isfinite(a) or a < 0:
        raise ValueError(f"alpha must be a finite number >= 0; got {alpha!r}")
    return a


def _check_path_settings(n_alphas, eps, val_fraction) -> None:
    """The regularisation path's settings: a clear error naming a bad one."""
    check_int(n_alphas, "n_alphas (points on the regularisation path)", 1)
    check_float(eps, "eps (the path's smallest alpha as a fraction of the largest)", 0.0, 1.0,
                low_open=True, high_open=True)  # fmt: skip
    check_float(val_fraction, "val_fraction (the share of examples held out)", 0.0, 1.0,
                low_open=True, high_open=True)  # fmt: skip


def _standardise(blocks, names, scale, what, dropped):
    """Centre (and scale) each block's columns; drop zero-variance ones, recording names."""
    out, kept = [], []
    top = max((float(np.abs(b).max()) if b.size else 0.0) for b in blocks) if blocks else 0.0
    tol = 1e-6 * max(top, 1e-30)
    for b, name in zip(blocks, names):
        b = np.asarray(b, np.float64)
        mu, sd = b.mean(0), b.std(0)
        keep = sd > tol
        dropped += [f"{name}[{i}]" for i in np.flatnonzero(~keep)]
        z = (b[:, keep] - mu[keep]) / (sd[keep] if scale else 1.0)
        out.append(z.astype(np.float32))
        kept.append(keep)
    return out, kept


def _warn_dropped(dropped):
    if dropped:
        more = f", … ({len(dropped) - 40} more)" if len(dropped) > 40 else ""
        shown = ", ".join(dropped[:40]) + more
        warnings.warn(
            f"CircuitLasso: dropped {len(dropped)} zero-variance column(s) (constant over the "
            f"samples, so no edge can be learned from them): {shown}",
            stacklevel=3,
        )


def _groups_of(n, groups):
    g = np.arange(n) if groups is None else np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must have one entry per sample ({n}); got shape {g.shape}")
    return g


# ----------------------------------------------------------------------------- the regression


def _one_problem(X, Y, mask, colsrc, alphas, solver, Xv, Yv, n_src, keep_path):
    """The λ path of one target chunk: `Y [m, C]` on the columns of `X [m, p]` kept by `mask`.

    Returns the coefficients per λ `[a, p, C]` and per λ: block sums of squared coefficients
    `[a, n_src, C]`, the squared residual on `(X, Y)`, the held-out squared error on
    `(Xv, Yv)`, and the non-zero count."""
    lasso = _solvers().lasso
    Xm = X * mask[None, :]

    def step(W, alpha):
        sol = lasso(Xm, Y, alpha, fit_intercept=False, init=W, solver=solver, throw=False)
        W = sol.value
        sq = jax.ops.segment_sum(W * W, colsrc, num_segments=n_src)
        rss = jnp.sum((Y - Xm @ W) ** 2)
        val = jnp.sum((Yv - (Xv * mask[None, :]) @ W) ** 2)
        return W, (W if keep_path else None, sq, rss, val, jnp.sum(W != 0))

    W0 = jnp.zeros((X.shape[1], Y.shape[1]), X.dtype)
    return jax.lax.scan(step, W0, alphas)[1]


@eqx.filter_jit
def _path(X, Ys, masks, colsrc, alphas, solver, Xv, Yvs, n_src, keep_path):
    """Every chunk's path, one after another in one `lax.map` (each chunk stops at its own
    convergence; vmapping the chunks would make every chunk run the slowest one's steps)."""

    def one(args):
        Y, mask, Yv = args
        return _one_problem(X, Y, mask, colsrc, alphas, solver, Xv, Yv, n_src, keep_path)

    return jax.lax.map(one, (Ys, masks, Yvs))


@eqx.filter_jit
def _refit(X, Ys, masks, alpha, solver, W0s):
    lasso = _solvers().lasso

    def one(args):
        Y, mask, W0 = args
        sol = lasso(
            X * mask[None, :], Y, alpha, fit_intercept=False, init=W0, solver=solver, throw=False
        )
        return sol.value

    return jax.lax.map(one, (Ys, masks, W0s))


def _compress(X, Y):
    """`(R, QᵀY)` scaled so the Lasso on them equals the Lasso on `(X, Y)` (`X = QR`)."""
    n, p = X.shape
    if n <= p:
        return X, Y, 1.0
    q, r = jnp.linalg.qr(X, mode="reduced")
    s = float(np.sqrt(p / n))
    return r * s, jnp.einsum("nm,cnk->cmk", q, Y) * s, s


def block_lasso(
    sources: Sequence | Mapping,
    targets: Sequence | Mapping | None = None,
    valid=None,
    *,
    alpha: float | None = None,
    select: str | None = None,
    n_edges: int | None = None,
    n_alphas: int = 20,
    eps: float = 1e-3,
    scale: bool = True,
    val_fraction: float = 0.2,
    groups=None,
    seed: int = 0,
    chunk_columns: int = 64,
    solver=None,
) -> BlockLassoResult:
    """CircuitLasso's block upper-triangular Lasso (Yin et al. 2026, arXiv 2606.16939).

    `sources`: blocks `[n_samples, d_b]` in computation order (a list, or `{name: block}`).
    With `targets=None` the blocks are their own targets and block `j` is regressed on the
    blocks before it (the linear SEM `X = AᵀX + ε`); otherwise `targets` are other blocks and
    `valid[s, t]` (booleans `[n_sources, n_targets]`) says which sources may feed target `t`.
    Columns are centred (and scaled with `scale`); zero-variance ones are dropped with a
    warning naming them. All target problems run as one compiled `lax.map` (columns of
    non-earlier blocks are masked, so every problem has the same shape). `groups` (one id per
    sample, e.g. the example of each (example, position) row) keeps held-out splits whole.
    λ: `alpha`, or chosen on a path by `select` (see the module docstring).
    """
    alpha = _check_alpha(alpha)
    src_names, src = _named(sources, "source")
    sem = targets is None
    tgt_names, tgt = (src_names, src) if sem else _named(targets, "target")
    n = src[0].shape[0]
    for name, b in list(zip(src_names, src)) + list(zip(tgt_names, tgt)):
        if b.ndim != 2 or b.shape[0] != n:
            raise ValueError(
                f"block {name!r} has shape {b.shape}; every block must be [n_samples={n}, d]"
            )
        bad = ~np.isfinite(b)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"block {name!r} has {int(bad.sum())} NaN or infinite value(s) (first at sample "
                f"{row}, column {col}): the activations at that site are not finite; check the "
                f"model's weights and inputs there"
            )
    if n < 3:
        raise ValueError(f"CircuitLasso needs at least 3 samples to centre and fit; got {n}")
    if sem:
        valid = np.triu(np.ones((len(src), len(src)), bool), 1)
    else:
        valid = np.asarray(valid, bool)
        if valid.shape != (len(src), len(tgt)):
            raise ValueError(
                f"valid has shape {valid.shape}; expected [n_sources, n_targets] = "
                f"{(len(src), len(tgt))}"
            )
    if select is None:
        select = "count" if n_edges is not None else "heldout"
    if select not in SELECTIONS:
        raise ValueError(f"unknown select {select!r}; choices: {SELECTIONS}")
    if select == "count" and (n_edges is None or int(n_edges) < 0):
        raise ValueError(f"select='count' needs n_edges >= 0; got {n_edges!r}")
    _check_path_settings(n_alphas, eps, val_fraction)
    groups = _groups_of(n, groups)
    if alpha is None and select == "heldout":
        n_groups = len(np.unique(groups))
        if n_groups < 2:
            raise ValueError(
                f"held-out selection needs samples from at least 2 groups (examples); got "
                f"{n_groups}: pass more examples, alpha=..., or select='bic'/'count'"
            )

    dropped: list[str] = []
    zsrc, keep_src = _standardise(src, src_names, scale, "source", dropped)
    if sem:
        ztgt, keep_tgt = zsrc, keep_src
    else:
        ztgt, keep_tgt = _standardise(tgt, tgt_names, scale, "target", dropped)
    _warn_dropped(dropped)
    widths = [z.shape[1] for z in zsrc]
    if sum(widths) == 0:
        raise ValueError("every source column is constant over the samples: nothing to regress")
    X = np.concatenate(zsrc, 1)
    colsrc = np.repeat(np.arange(len(src)), widths)

    # pack target columns sharing a mask into chunks of `chunk_columns`
    masks_of = {}
    for t, z in enumerate(ztgt):
        if z.shape[1] == 0 or not valid[:, t].any():
            continue
        key = valid[:, t].tobytes()
        masks_of.setdefault(key, []).append(t)
    C = max(1, int(chunk_columns))
    mask_rows, ys, owners = [], [], []
    for key, ts in masks_of.items():
        cols = np.concatenate([ztgt[t] for t in ts], 1)
        who = np.concatenate([np.full(ztgt[t].shape[1], t) for t in ts])
        for start in range(0, cols.shape[1], C):
            y = np.zeros((n, C), np.float32)
            o = np.full(C, -1)
            part = cols[:, start : start + C]
            y[:, : part.shape[1]] = part
            o[: part.shape[1]] = who[start : start + C]
            ys.append(y)
            owners.append(o)
            mask_rows.append(valid[colsrc, ts[0]].astype(np.float32))
    Ys = jnp.asarray(np.stack(ys)) if ys else jnp.zeros((0, n, C))
    masks = jnp.asarray(np.stack(mask_rows)) if mask_rows else jnp.zeros((0, X.shape[1]))
    owners = np.stack(owners) if owners else np.zeros((0, C), int)
    solver = solver if solver is not None else _default_solver()

    def block_sums(sq):  # [problems, ..., n_src, C] -> [..., n_src, n_tgt]
        out = np.zeros(sq.shape[1:-1] + (len(tgt),))
        for c in range(sq.shape[0]):
            for j in range(C):
                if owners[c, j] >= 0:
                    out[..., owners[c, j]] += sq[c, ..., j]
        return out

    Xj = jnp.asarray(X)
    alphas = None
    edge_counts = val_err = bic = None
    entry = np.zeros(valid.shape)
    Wpath = None
    index = -1
    if alpha is None:
        # the λ grid: from the smallest λ that zeroes every coefficient
        corr = jnp.abs(jnp.einsum("np,cnk->cpk", Xj, Ys) * masks[:, :, None]).max() / n
        amax = float(corr) if ys else 1.0
        amax = amax if amax > 0 else 1.0
        alphas = amax * np.geomspace(1.0, float(eps), int(n_alphas))
        if select == "heldout":
            rng = np.random.default_rng(seed)
            ids = np.unique(groups)
            n_val = min(max(1, int(round(val_fraction * len(ids)))), len(ids) - 1)
            held = np.isin(groups, rng.permutation(ids)[:n_val])
            fitX, fitY, _ = _compress(Xj[~held], Ys[:, ~held])
            Xv, Yv = Xj[held], Ys[:, held]
        else:
            fitX, fitY, sc = _compress(Xj, Ys)
            Xv, Yv = Xj[:1] * 0, Ys[:, :1] * 0
        # the path's coefficients warm-start the refit when they fit in 256 MiB
        keep_path = len(ys) * len(alphas) * X.shape[1] * C * 4 <= 2**28
        Wpath, sq, rss, val, nnz = (
            None if x is None else np.asarray(x)
            for x in _path(
                fitX, fitY, masks, jnp.asarray(colsrc), jnp.asarray(alphas, X.dtype), solver,
                Xv, Yv, len(src), keep_path,
            )
        )  # fmt: skip
        norms_path = (
            np.sqrt(block_sums(sq.transpose(0, 1, 2, 3)))
            if len(ys)
            else np.zeros((len(alphas), len(src), len(tgt)))
        )
        on = (norms_path > 0) & valid[None]
        edge_counts = on.sum((1, 2))
        entry = on.mean(0)
        if select == "heldout":
            val_err = val.sum(0) / max(1, int(Yv.shape[1]) * int(np.sum(owners >= 0)))
            index = int(np.argmin(val_err))
        elif select == "count":
            hit = np.flatnonzero(edge_counts >= int(n_edges))
            index = int(hit[0]) if hit.size else len(alphas) - 1
        else:
            k = max(1, int(np.sum(owners >= 0)))
            rss_tot = rss.sum(0)
            # rss is on compressed data: add the part of ‖Y‖² outside X's column space
            total = float(jnp.sum(Ys**2))
            comp = float(jnp.sum(fitY**2)) / sc**2
            rss_full = np.maximum(rss_tot / sc**2 + (total - comp), 1e-12)
            bic = n * k * np.log(rss_full / (n * k)) + nnz.sum(0) * np.log(n)
            index = int(np.argmin(bic))
        alpha = float(alphas[index])
    if Wpath is not None:
        W0s = jnp.asarray(Wpath[:, index])  # warm start for the refit on all samples
    else:
        W0s = jnp.zeros((len(ys), X.shape[1], C), X.dtype)
    W = np.asarray(_refit(*_compress(Xj, Ys)[:2], masks, jnp.asarray(alpha, X.dtype), solver, W0s))
    # coefficients in full column coordinates, and block norms
    tgt_w = [z.shape[1] for z in ztgt]
    tgt_off = np.r_[0, np.cumsum(tgt_w)]
    A_kept = np.zeros((X.shape[1], tgt_off[-1]), np.float32)
    fill = {t: 0 for t in range(len(tgt))}
    for c in range(W.shape[0]):
        for j in range(C):
            t = owners[c, j]
            if t >= 0:
                A_kept[:, tgt_off[t] + fill[t]] = W[c, :, j]
                fill[t] += 1
    rows_of = np.eye(len(src))[colsrc]  # [p, n_src]
    cols_of = np.eye(len(tgt))[np.repeat(np.arange(len(tgt)), tgt_w)]  # [K, n_tgt]
    sq = rows_of.T @ (A_kept.astype(np.float64) ** 2) @ cols_of
    norms = np.sqrt(sq) * valid
    support = norms > 0
    pos = norms[support]
    tiny = 1e-3 * (pos.min() if pos.size else 1.0)
    scores = np.where(support, norms, tiny * entry) * valid
    coef = _expand(A_kept, keep_src, keep_tgt)
    return BlockLassoResult(
        src_names, tgt_names, scores, support, coef,
        np.asarray(alphas if alphas is not None else [alpha]), float(alpha), index,
        None if index < 0 else select, edge_counts, val_err, bic, tuple(dropped), n,
    )  # fmt: skip


def _expand(A_kept, keep_src, keep_tgt):
    rows = np.concatenate(keep_src) if keep_src else np.zeros(0, bool)
    cols = np.concatenate(keep_tgt) if keep_tgt else np.zeros(0, bool)
    A = np.zeros((rows.size, cols.size), np.float32)
    A[np.ix_(np.flatnonzero(rows), np.flatnonzero(cols))] = A_kept
    return A


def _default_solver():
    from ..solvers import FISTA

    return FISTA(rtol=1e-3, max_steps=2000)


def _named(blocks, what):
    if isinstance(blocks, Mapping):
        names, arrays = tuple(str(k) for k in blocks), list(blocks.values())
    else:
        arrays = list(blocks)
        names = tuple(f"{what}{i}" for i in range(len(arrays)))
    if not arrays:
        raise ValueError(f"need at least one {what} block")
    return names, [np.asarray(a) for a in arrays]


# ----------------------------------------------------------------------------- activations


@eqx.filter_jit
def _pca(blocks, r: int, key):
    """The top-`r` principal components of each block `[b, n, d]` (randomised SVD, one power
    iteration; Halko et al. 2011): `[b, n, r]` scores, the block's variance kept in order."""

    def one(x, k):
        x = x - x.mean(0)
        omega = jax.random.normal(k, (x.shape[1], min(r + 8, x.shape[1])), x.dtype)
        y = x @ (x.T @ (x @ omega))
        q = jnp.linalg.qr(y)[0]
        small = q.T @ x
        w, u = jnp.linalg.eigh(small @ small.T)
        u, w = u[:, ::-1][:, :r], w[::-1][:r]
        return (q @ u) * jnp.sqrt(jnp.maximum(w, 0.0))

    return jax.vmap(one)(blocks, jax.random.split(key, blocks.shape[0]))


def _reduce(blocks: list, r: int | None, key) -> list:
    """Blocks wider than `r` replaced by their top-`r` principal components (same widths
    grouped into one compiled call)."""
    if r is None:
        return blocks
    out = list(blocks)
    widths = sorted({b.shape[1] for b in blocks if b.shape[1] > r})
    for w in widths:
        idx = [i for i, b in enumerate(blocks) if b.shape[1] == w]
        red = np.asarray(_pca(jnp.stack([jnp.asarray(blocks[i]) for i in idx]), int(r), key))
        for i, x in zip(idx, red):
            out[i] = x
    return out


@eqx.filter_jit
def _target_acts(model, tokens):
    """Logits and the q/k/v/MLP-input activations the graph targets read, per example."""
    from ..models._transformer import forward

    def one(t):
        logits, acts = forward(model, t)
        keep = {
            k: v
            for k, v in acts.values.items()
            if k.endswith(("attn.hook_q", "attn.hook_k", "attn.hook_v", "mlp.hook_pre",
                           "mlp.hook_pre_linear"))
        }  # fmt: skip
        return logits, keep

    return jax.vmap(one)(tokens)


def _component_blocks(model, g, tokens):
    """Source outputs and target reads, each `[rows, width]` with rows = (example, position)."""
    from ..graph import source_outputs

    outs = np.asarray(source_outputs(model, tokens, g))  # [B, S, T, D]
    B, S, T, D = outs.shape
    sources = [outs[:, s].reshape(B * T, D) for s in range(S)]
    logits, acts = _target_acts(model, tokens)
    acts = {k: np.asarray(v) for k, v in acts.items()}
    targets = []
    for name in g.targets:
        if name == "logits":
            x = np.asarray(logits)
        elif "." in name:
            node, kind = name.split(".")
            layer = int(node[1:].split("H" if "H" in node else "KV")[0])
            head = int(node.split("H" if "H" in node else "KV")[-1])
            x = acts[f"blocks.{layer}.attn.hook_{kind}"][:, :, head]
        else:  # MLP{l}: its pre-activations (and the gated MLP's linear branch)
            layer = int(name[3:])
            x = acts[f"blocks.{layer}.mlp.hook_pre"]
            lin = f"blocks.{layer}.mlp.hook_pre_linear"
            if lin in acts:
                x = np.concatenate([x, acts[lin]], -1)
        targets.append(x.reshape(B * T, -1))
    return sources, targets


def _site_order(model, tokens) -> list[str]:
    from ..models._transformer import forward

    shapes = jax.eval_shape(lambda t: forward(model, t)[1].values, tokens[0])
    return list(shapes)


def _node_of_site(site: str, head: int | None):
    """The graph node a site's block belongs to, or None."""
    from ..models._site import SiteRef

    ref = SiteRef.parse(site)
    if ref.kind in HEAD_KINDS and head is not None:
        return f"L{ref.layer}H{head}"
    if ref.kind.startswith("mlp_"):
        return f"MLP{ref.layer}"
    if ref.kind in ("embed", "pos_embed"):
        return "embed"
    if ref.kind == "ln_final":
        return "logits"
    return None


@eqx.filter_jit
def _site_acts(model, tokens, sites):
    from ..models._transformer import forward

    def one(t):
        acts = forward(model, t)[1].values
        return {s: acts[s] for s in sites}

    return jax.vmap(one)(tokens)


def _site_blocks(model, tokens, sites, encoder, granularity):
    """Blocks of raw units (per head for head-indexed sites) or SAE features of `sites`."""
    from ..models._site import SITE_KINDS, SiteRef, nearest

    if not sites:
        raise ValueError(f"granularity={granularity!r} needs sites=[...] (TransformerLens names)")
    order = _site_order(model, tokens)
    names = [s.name if isinstance(s, SiteRef) else str(s) for s in sites]
    for s in names:
        if s not in order:
            raise ValueError(f"unknown site {s!r}{nearest(s, order)}")
    places = [order.index(s) for s in names]
    for a, b, pa, pb in zip(names, names[1:], places, places[1:]):
        if pb <= pa:
            raise ValueError(
                f"sites must be in computation order (within a layer attention before the "
                f"MLP) without repeats: {b!r} comes {'at' if pb == pa else 'before'} {a!r}"
            )
    if granularity == "sae":
        if encoder is None:
            raise ValueError("granularity='sae' needs encoder= (a callable or {site: callable})")
        if isinstance(encoder, Mapping):
            missing = [s for s in names if s not in encoder]
            if missing:
                raise ValueError(f"no encoder for site(s) {missing}; encoders: {list(encoder)}")
        elif not callable(encoder):
            raise TypeError(f"encoder must be callable or a mapping of callables; got {encoder!r}")
    acts = {k: np.asarray(v) for k, v in _site_acts(model, tokens, tuple(names)).items()}
    blocks, labels, nodes = [], [], []
    for s in names:
        x = acts[s]  # [B, T, ...] (pattern-like sites: [B, heads, T, T])
        kind = SiteRef.parse(s).kind
        axes = SITE_KINDS[kind][1]
        if axes[0] != "position":
            raise ValueError(f"site {s!r} has axes {axes}: need a per-position site")
        rows = x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])
        if granularity == "sae":
            enc = encoder[s] if isinstance(encoder, Mapping) else encoder
            z = np.asarray(enc(jnp.asarray(rows.reshape(rows.shape[0], -1))))
            if z.ndim != 2 or z.shape[0] != rows.shape[0]:
                raise ValueError(
                    f"the encoder of {s!r} returned shape {z.shape}; expected "
                    f"[{rows.shape[0]}, n_features]"
                )
            blocks.append(z)
            labels.append(s)
            nodes.append(_node_of_site(s, None))
        elif "head" in axes:
            for h in range(rows.shape[1]):
                blocks.append(rows[:, h])
                labels.append(f"{s}[{h}]")
                nodes.append(_node_of_site(s, h))
        else:
            blocks.append(rows.reshape(rows.shape[0], -1))
            labels.append(s)
            nodes.append(_node_of_site(s, None))
    return blocks, labels, nodes


def _edge_scores_from_nodes(g, block_scores, nodes):
    """Block scores (a SEM over site blocks) mapped to graph edges, max over blocks."""
    values = np.zeros(g.valid.shape)
    hit = False
    for i, a in enumerate(nodes):
        if a is None or a not in g.sources:
            continue
        s = g.sources.index(a)
        for j, b in enumerate(nodes):
            if b is None or j <= i:
                continue
            if b.startswith("L"):
                ts = [t for t, name in enumerate(g.targets) if name.split(".")[0] == b]
            else:
                ts = [g.targets.index(b)] if b in g.targets else []
            for t in ts:
                if g.valid[s, t]:
                    values[s, t] = max(values[s, t], block_scores[i, j])
                    hit = True
    return values if hit else None


# ----------------------------------------------------------------------------- circuit_lasso


def circuit_lasso(
    model,
    clean,
    corrupt=None,
    metric=None,
    *,
    alpha: float | None = None,
    granularity: str = "components",
    sites: Sequence[str] | None = None,
    encoder: Callable | Mapping[str, Callable] | None = None,
    select: str | None = None,
    n_edges: int | None = None,
    n_alphas: int = 20,
    eps: float = 1e-3,
    rank: int | None = None,
    target_rank: int | None = None,
    max_columns: int = 2048,
    scale: bool = True,
    val_fraction: float = 0.2,
    seed: int = 0,
    solver=None,
    progress: bool = False,
) -> CircuitLassoResult:
    """CircuitLasso (Yin et al. 2026, arXiv 2606.16939): a circuit from forward passes only.

    `clean` (and `corrupt`, optional; or a `jaxcirc.tasks.Task` as `clean`) are `[batch,
    seq]` tokens; every (example, position) of both is one observational sample. `metric` is
    accepted for the shared method signature and unused (the regression sees no behaviour;
    see `target_lasso`). `granularity`:

    - `"components"`: graph sources regressed into graph targets (module docstring); sources
      wider than `max_columns // n_sources` (or `rank`) are reduced to their top principal
      components, targets to `target_rank` (default: at most 32 columns each).
    - `"neurons"`: raw units of `sites` (TransformerLens names in computation order; head
      sites split per head), each block regressed on the earlier ones.
    - `"sae"`: `encoder(acts [rows, d]) -> [rows, n_features]` of each site (one callable or
      `{site: callable}`), e.g. a pretrained SAE's encoder.

    **Speed.** The regression's cost grows with the number of columns: `rank` (principal
    components per source; `target_rank` per target) trades accuracy for time. On a
    GPT-2-small-shaped model (8 prompt pairs) rank 1 takes 8 s end to end and rank 4 about 130 s;
    on the tracr scorecard mean edge AUROC is 0.85 at rank 1, 0.91 at rank 2 and 0.98 at full
    width (`benchmarks/RESULTS.md`). The default solver stops at a duality gap of 1e-3 of the
    objective.

    Block scores map to the edges of `graph(model)` (`scores`; for site blocks through the
    node each site belongs to: head sites to `L{l}H{h}` and its q/k/v inputs, `mlp_*` to
    `MLP{l}`, `embed` and `ln_final`), λ as in `block_lasso`.
    """
    check_choices((granularity,), GRANULARITIES, "granularity", one="granularity")
    if hasattr(clean, "clean") and hasattr(clean, "corrupt"):
        if corrupt is not None:
            raise TypeError("give a Task alone, or clean and corrupt tokens, not both")
        clean, corrupt = clean.clean, clean.corrupt
    _check_alpha(alpha)
    for name, value in (("rank", rank), ("target_rank", target_rank)):
        if value is not None:
            check_int(value, f"circuit_lasso {name} (principal components per block)", 1)
    check_int(max_columns, "circuit_lasso max_columns", 1)
    _check_path_settings(n_alphas, eps, val_fraction)
    clean = model.check_tokens(clean, name="clean", ndim=2)
    tokens = clean
    if corrupt is not None:
        corrupt = model.check_tokens(corrupt, name="corrupt", ndim=2)
        if corrupt.shape[1] != clean.shape[1]:
            raise ValueError(
                f"corrupt tokens have shape {corrupt.shape}; expected [batch, {clean.shape[1]}]"
            )
        tokens = jnp.concatenate([clean, corrupt])
    bar = _bar(progress)
    g = graph(model)
    start = time.perf_counter()
    T = tokens.shape[1]
    key = jax.random.key(seed)
    if granularity == "components":
        src, tgt = _component_blocks(model, g, tokens)
        r_src = rank if rank is not None else (
            None if len(src) * src[0].shape[1] <= max_columns else max(2, max_columns // len(src))
        )  # fmt: skip
        r_tgt = target_rank if target_rank is not None else 32
        src, tgt = _reduce(src, r_src, key), _reduce(tgt, r_tgt, key)
        src_blocks, tgt_blocks = dict(zip(g.sources, src)), dict(zip(g.targets, tgt))
        valid = g.valid
    else:
        blocks, labels, nodes = _site_blocks(model, tokens, sites, encoder, granularity)
        if rank is not None:
            blocks = _reduce(blocks, rank, key)
        src_blocks, tgt_blocks, valid = dict(zip(labels, blocks)), None, None
    jax.block_until_ready(0)
    collected = time.perf_counter()
    _step(bar, "regress")
    fit = block_lasso(
        src_blocks, tgt_blocks, valid, alpha=alpha, select=select, n_edges=n_edges,
        n_alphas=n_alphas, eps=eps, scale=scale, val_fraction=val_fraction,
        groups=np.repeat(np.arange(tokens.shape[0]), T), seed=seed, solver=solver,
    )  # fmt: skip
    _step(bar, "circuit")
    if granularity == "components":
        values = fit.block_scores
        circ = fit.support & g.valid
    else:
        values = _edge_scores_from_nodes(g, fit.block_scores, nodes)
        support = _edge_scores_from_nodes(g, fit.support.astype(float), nodes)
        circ = None if support is None else support > 0
    scores = circuit = None
    if values is not None:
        scores = Scores(jnp.asarray(values, jnp.float32), g)
        if fit.select == "count" and circ.sum() > int(n_edges):
            circuit = scores.top(int(n_edges))
        else:
            circuit = Circuit(jnp.asarray(circ), g, scores)
        circuit = Circuit(circuit.mask, g, scores, {"alpha": fit.alpha})
    done = time.perf_counter()
    if bar is not None:
        bar.update()
        bar.close()
    return CircuitLassoResult(
        scores, circuit, fit.alphas, fit.alpha, fit.edge_counts, fit.validation_error, fit.bic,
        fit, {"collect": collected - start, "regress": done - collected},
    )  # fmt: skip


def _bar(progress):
    if not progress:
        return None
    from tqdm.auto import tqdm

    bar = tqdm(total=3, desc="CircuitLasso", unit="stage")
    bar.set_postfix_str("collect")
    return bar


def _step(bar, name):
    if bar is not None:
        bar.update()
        bar.set_postfix_str(name)


# ----------------------------------------------------------------------------- target-inclusive


def feature_ranking(
    features,
    y,
    *,
    loss: str = "squared",
    alpha: float | None = None,
    n_alphas: int = 12,
    eps: float = 1e-2,
    scale: bool = True,
    val_fraction: float = 0.2,
    seed: int = 0,
    solver=None,
    names: Sequence[str] | None = None,
) -> FeatureRanking:
    """Target-inclusive CircuitLasso (Yin et al. 2026, §3.3): `y` regressed on `features`.

    `features`: `[n_samples, n_features]` (e.g. SAE codes of one site); `y`: `[n]` or `[n, k]`
    values (`loss="squared"`), 0/1 labels (`"logistic"`) or class ids (`"softmax"`, cross
    entropy). Columns are centred (and scaled); constant ones are dropped with a warning.
    λ: `alpha`, or the least held-out loss on a geometric path. **Returns:** a
    `FeatureRanking` (dataset-level `|Â|` and per-prompt `|Â| ⊙ |z|` rankings)."""
    if loss not in ("squared", "logistic", "softmax"):
        raise ValueError(f"unknown loss {loss!r}; choices: 'squared', 'logistic', 'softmax'")
    alpha = _check_alpha(alpha)
    _check_path_settings(n_alphas, eps, val_fraction)
    Z = np.asarray(features, np.float64)
    if Z.ndim != 2:
        raise ValueError(f"features must be [n_samples, n_features]; got shape {Z.shape}")
    n = Z.shape[0]
    y = np.asarray(y)
    if y.shape[0] != n:
        raise ValueError(f"y has {y.shape[0]} samples; features have {n}")
    if n < 4:
        raise ValueError(f"feature_ranking needs at least 4 samples; got {n}")
    names = [f"feature{i}" for i in range(Z.shape[1])] if names is None else list(names)
    dropped: list[str] = []
    mu, sd = Z.mean(0), Z.std(0)
    keep = sd > 1e-6 * max(float(np.abs(Z).max()) if Z.size else 0.0, 1e-30)
    dropped += [names[i] for i in np.flatnonzero(~keep)]
    _warn_dropped(dropped)
    if not keep.any():
        raise ValueError("every feature is constant over the samples: nothing to rank")
    Zs = ((Z[:, keep] - mu[keep]) / (sd[keep] if scale else 1.0)).astype(np.float32)
    if loss == "squared":
        Y = y.reshape(n, -1).astype(np.float32)
        resid = Y - Y.mean(0)
    elif loss == "logistic":
        if not np.isin(y, (0, 1)).all():
            raise ValueError(f"loss='logistic' needs 0/1 labels; got values {np.unique(y)[:5]}")
        Y = y.reshape(n, 1).astype(np.float32)
        resid = Y - Y.mean(0)
    else:
        if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1 or y.min() < 0:
            raise ValueError("loss='softmax' needs integer class ids >= 0, shape [n]")
        Y = np.eye(int(y.max()) + 1, dtype=np.float32)[y]
        resid = Y - Y.mean(0)
    solver = solver if solver is not None else _default_solver()
    alphas = val_loss = None
    if alpha is None:
        amax = float(np.abs(Zs.T @ resid).max() / n) or 1.0
        alphas = amax * np.geomspace(1.0, eps, int(n_alphas))
        rng = np.random.default_rng(seed)
        held = np.zeros(n, bool)
        held[rng.permutation(n)[: min(max(1, int(round(val_fraction * n))), n - 1)]] = True
        val_loss = np.asarray(
            _held_out(
                jnp.asarray(Zs[~held]), jnp.asarray(Y[~held]), jnp.asarray(Zs[held]),
                jnp.asarray(Y[held]), jnp.asarray(alphas, jnp.float32), loss, solver,
            )
        )  # fmt: skip
        alpha = float(alphas[int(np.argmin(val_loss))])
    coef_k, b = _fit_target(jnp.asarray(Zs), jnp.asarray(Y), jnp.float32(alpha), loss, solver)
    coef = np.zeros((Z.shape[1], coef_k.shape[1]), np.float32)
    coef[keep] = np.asarray(coef_k)
    dataset = np.sqrt((coef.astype(np.float64) ** 2).sum(1))
    zfull = np.zeros_like(Z)
    zfull[:, keep] = Zs
    prompt = dataset[None, :] * np.abs(zfull)
    return FeatureRanking(
        coef, np.asarray(b), dataset, prompt, np.argsort(-dataset, kind="stable"), alpha,
        alphas, val_loss,
    )  # fmt: skip


def _loss_args(loss, Y):
    """The labels as the solver takes them for `loss`."""
    if loss == "logistic":
        return Y[:, 0]
    return Y


@eqx.filter_jit
def _fit_target(Z, Y, alpha, loss, solver):
    sol = _solvers().lasso(Z, _loss_args(loss, Y), alpha, loss=loss, solver=solver, throw=False)
    W = sol.value.reshape(Z.shape[1], -1)
    b = jnp.zeros(W.shape[1]) if sol.intercept is None else jnp.reshape(sol.intercept, (-1,))
    return W, b


@eqx.filter_jit
def _held_out(Ztr, Ytr, Zv, Yv, alphas, loss, solver):
    def one(a):
        W, b = _fit_target(Ztr, Ytr, a, loss, solver)
        f = Zv @ W + b
        if loss == "squared":
            return jnp.mean((Yv - f) ** 2)
        if loss == "logistic":
            return jnp.mean(jnp.logaddexp(0.0, f[:, 0]) - Yv[:, 0] * f[:, 0])
        return -jnp.mean(jnp.sum(Yv * jax.nn.log_softmax(f, -1), -1))

    return jax.lax.map(one, alphas)


def target_lasso(
    model,
    tokens,
    y,
    *,
    site: str,
    position: int = -1,
    encoder: Callable | None = None,
    loss: str = "squared",
    **kwargs,
) -> FeatureRanking:
    """A behaviour regressed on one site's features at `position` (Yin et al. 2026, §3.3).

    `y`: `[batch]` targets (a logit difference, a class id) or a callable mapping the logits
    `[batch, seq, d_vocab]` to them (e.g. the per-prompt logit difference). `encoder` maps the
    site's activations `[batch, d]` to features (an SAE's encoder); by default the raw units.
    Other keywords go to `feature_ranking`."""
    from ..models._site import SiteRef, nearest

    tokens = model.check_tokens(tokens, ndim=2)
    check_index(position, tokens.shape[1], "position", context=f" for {tokens.shape[1]} tokens")
    name = site.name if isinstance(site, SiteRef) else str(site)
    order = _site_order(model, tokens)
    if name not in order:
        raise ValueError(f"unknown site {name!r}{nearest(name, order)}")
    logits, acts = _logits_and_site(model, tokens, name)
    x = np.asarray(acts)[:, position].reshape(tokens.shape[0], -1)
    z = np.asarray(encoder(jnp.asarray(x))) if encoder is not None else x
    target = np.asarray(y(logits)) if callable(y) else np.asarray(y)
    return feature_ranking(z, target, loss=loss, **kwargs)


@eqx.filter_jit
def _logits_and_site(model, tokens, name):
    from ..models._transformer import forward

    def one(t):
        logits, acts = forward(model, t)
        return logits, acts.values[name]

    return jax.vmap(one)(tokens)


class CircuitLasso(DiscoveryMethod):
    """CircuitLasso (Yin et al. 2026) as a method value: `hyperparameters` are the keyword
    arguments of `circuit_lasso` (`n_edges`, `select`, `rank`, `alpha`, ...); the circuit is
    `circuit_lasso(...).circuit` (its `info` adds the λ path's timings)."""

    hyperparameters: tuple = eqx.field(static=True)

    def __init__(self, **hyperparameters):
        granularity = hyperparameters.get("granularity", "components")
        if granularity != "components":
            raise ValueError(
                f"CircuitLasso as a discovery method maps components to graph edges; "
                f"granularity={granularity!r} is for circuit_lasso itself"
            )
        self.hyperparameters = tuple(sorted(hyperparameters.items()))

    def __call__(self, model, task) -> Circuit:
        res = circuit_lasso(model, task, **dict(self.hyperparameters))
        info = {**res.circuit.info, "seconds": res.seconds}
        return Circuit(res.circuit.mask, res.circuit.graph, res.circuit.scores, info)
