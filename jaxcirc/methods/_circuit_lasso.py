"""CircuitLasso: circuits from sparse regression on observational activations.

Yin et al. 2026, "Scalable Circuit Learning for Interpreting Large Language Models"
(CircuitLasso, ICML 2026 MI workshop, arXiv 2606.16939). Activations from forward passes only
are stacked in computation order (within a layer, attention before the MLP) and a linear SEM
`X = Aᵀ X + ε` is fitted with an ℓ1 penalty and `A` block upper-triangular: each target block is
regressed on the blocks computed before it. The block norms of `A` rank the edges.

- `block_lasso(blocks, ...)`: the regression on arrays (blocks of columns in computation
  order; sources may differ from targets).
- `circuit_lasso(model, clean, corrupt=None, ...)`: a model's components, raw units of given
  sites, or SAE features of them, mapped to the edges of `jaxcirc.graph.graph(model)`; with a
  metric (or a Task), the task circuit (`_task_circuit`: the part of the skeleton that leads
  to the behaviour).
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
from jax.sharding import PartitionSpec as P

from .. import _mesh
from .._checks import check_choices, check_float, check_index, check_int
from ..graph import Circuit, Scores, graph
from ..patching._stable import user_stacklevel
from . import _task_circuit as _task
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
    - `steps`: per λ of the path, the most solver steps any sub-problem took (or None).
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
    steps: np.ndarray | None = None


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
    behaviour: object = None  # a `Behaviour` (the task circuit), else None


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
    """One short warning per call: how many constant columns were left out (in how many
    blocks) and the first few names; the full list is the result's `dropped`. It names the
    user's line that called jaxcirc, not a line inside it."""
    if not dropped:
        return
    blocks = {d.rsplit("[", 1)[0] for d in dropped if "[" in d}
    where = f" in {len(blocks)} block(s)" if blocks else ""
    shown = ", ".join(dropped[:4]) + (", …" if len(dropped) > 4 else "")
    warnings.warn(
        f"CircuitLasso: dropped {len(dropped)} zero-variance column(s){where} (constant over "
        f"the samples, so no edge can be learned from them), e.g. {shown}; all are listed in "
        f"the result's `dropped`",
        stacklevel=user_stacklevel(),
    )


def _groups_of(n, groups):
    g = np.arange(n) if groups is None else np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must have one entry per sample ({n}); got shape {g.shape}")
    return g


# ----------------------------------------------------------------------------- the regression


def _bucket(x: int, top: int, parts: int | None = None) -> int:
    """`x` rounded up to a size `2^k` or `3·2^(k-1)` (at most `top`), or with `parts` to a
    multiple of `top / parts`: sub-problems of nearby sizes share one compiled program."""
    if parts is not None:
        q = -(-top // parts)
        return min(top, -(-max(x, 1) // q) * q)
    if x <= 2:
        return min(max(x, 1), max(top, 1))
    k = 1 << (x - 1).bit_length()
    return min(3 * k // 4 if 3 * k // 4 >= x else k, top)


def _compress(X, Y):
    """One QR of the whole design for every target's sub-problem: with `X = QR`,
    `‖Y − X_S w‖² = ‖QᵀY − R_S w‖² + ‖(I − QQᵀ)Y‖²` for ANY set `S` of source columns, and
    `R_S` has non-zero rows only up to `max(S)` (so a prefix of the sources, as in Yin et al.'s
    block upper-triangular order, needs only the first `|S|` rows). Returns `(R, QᵀY)` in
    float64 (`X` and `Y` themselves when there are no more rows than columns)."""
    X = np.asarray(X, np.float64)
    Y = np.asarray(Y, np.float64)
    if X.shape[0] <= X.shape[1]:
        return X, Y
    q, r = np.linalg.qr(X, mode="reduced")
    return r, q.T @ Y


class _Stacked:
    """Every target group's sub-problem `Y_g ≈ X_{S_g} W_g` (the targets sharing one set `S_g`
    of earlier source columns), compressed (`_compress`, one QR), padded to bucketed shapes and
    stacked per shape: each stack is ONE compiled `lax.map` (`_one_problem`).

    Scaled so the solver's `1/(2·rows)` objective equals `1/(2n)·‖Y − XW‖²` of the n samples
    (scikit-learn's Lasso scaling, the same λ for every target).

    `split`: `(mesh, axes)`: each stack's sub-problems are split over those mesh axes (padded
    with repeats of its last one, whose results are dropped) and solved where they lie."""

    def __init__(self, X, Y, groups, colsrc, n_src, n_tgt, Xv, Yv, pad_rows: int = 0,
                 split=None):  # fmt: skip
        n, p = X.shape
        self.split = split
        R, QY = _compress(X, Y)
        compressed = n > p
        m = R.shape[0] if compressed else max(n, pad_rows)  # zero rows: same shapes as a
        # fit on more samples (the held-out path and the refit share compiled programs)
        self.n, self.groups, self.stacks, self.locate = n, groups, {}, {}
        self.outside = np.zeros(len(groups))  # ‖Y_g‖² the sub-problem's rows do not see
        yy = np.sum(np.asarray(Y, np.float64) ** 2, 0)
        yv = np.sum(np.asarray(Yv, np.float64) ** 2, 0)
        cover = np.concatenate([cols for _, cols, _ in groups])
        # every coefficient zero (λ at or above the path's top): the fit's record, unsolved
        self.null = dict(
            sq=np.zeros((n_src, n_tgt)), rss=float(yy[cover].sum()), val=float(yv[cover].sum()),
            nnz=0, steps=0,
        )  # fmt: skip
        for i, (sel, cols, _) in enumerate(groups):
            prefix = compressed and np.array_equal(sel, np.arange(sel.size))
            # cut to the prefix only where it pays for its extra compiled shapes
            P = _bucket(sel.size, p, parts=1 if p < 256 else 4)
            key = (min(P, m) if prefix else m, P, _bucket(cols.size, 1 << 30))
            self.stacks.setdefault(key, []).append(i)
            self.locate[i] = (key, len(self.stacks[key]) - 1)
            self.outside[i] = yy[cols].sum() - np.sum(QY[: key[0], cols] ** 2)
        self.arrays = {}
        for key, members in self.stacks.items():
            rows, P, K = key
            s = np.sqrt(rows / n)
            D = np.zeros((len(members), rows, P), np.float32)
            T = np.zeros((len(members), rows, K), np.float32)
            XV = np.zeros((len(members), Xv.shape[0], P), np.float32)
            YV = np.zeros((len(members), Xv.shape[0], K), np.float32)
            cs = np.full((len(members), P), n_src, np.int32)
            for j, i in enumerate(members):
                sel, cols, _ = groups[i]
                D[j, : min(rows, R.shape[0]), : sel.size] = R[:rows, sel] * s
                T[j, : min(rows, R.shape[0]), : cols.size] = QY[:rows, cols] * s
                XV[j, :, : sel.size] = Xv[:, sel]
                YV[j, :, : cols.size] = Yv[:, cols]
                cs[j, : sel.size] = colsrc[sel]
            self.arrays[key] = tuple(self._place(a) for a in (D, T, XV, YV, cs)) + (s,)

    def _place(self, a):
        """A stack on the device(s): split over the mesh (padded with repeats of its last
        sub-problem to a multiple of the devices), or whole."""
        a = jnp.asarray(a)
        if self.split is None:
            return a
        mesh, axes = self.split
        extra = -len(a) % _mesh.axis_size(mesh, axes)
        a = jnp.concatenate([a, jnp.repeat(a[-1:], extra, 0)])
        return _mesh.split_along(mesh, axes, a, what="number of sub-problems")

    def zeros(self):
        return {
            k: self._place(np.zeros((len(v), k[1], k[2]), np.float32))
            for k, v in self.stacks.items()
        }

    def warm(self, Ws, other: _Stacked):
        """`other`'s coefficients `Ws` rearranged into this one's stacks (the same groups and
        padded widths; only the rows may differ): warm starts across the two fits."""
        out = {}
        for key, members in self.stacks.items():
            parts = [Ws[other.locate[i][0]][other.locate[i][1]] for i in members]
            out[key] = self._place(jnp.stack(parts))
        return out


def _one_problem(D, T, W0, Xv, Yv, cs, alpha, solver, n_src):
    """One sub-problem at one λ (warm-started from `W0`): the coefficients, the squared
    coefficients summed per source block `[n_src, K]`, the (compressed) squared residual,
    the held-out squared error, the non-zero count and the solver's steps."""
    sol = _solvers().lasso(D, T, alpha, fit_intercept=False, init=W0, solver=solver, throw=False)
    W = sol.value
    sq = jax.ops.segment_sum(W * W, cs, num_segments=n_src + 1)[:n_src]
    rss = jnp.sum((T - D @ W) ** 2)
    val = jnp.sum((Yv - Xv @ W) ** 2)
    return W, sq, rss, val, jnp.sum(W != 0), sol.stats["num_steps"]


@eqx.filter_jit
def _stack(D, T, W0, alpha, solver, Xv, Yv, colsrc, n_src):
    """A stack of same-shaped sub-problems at one λ, one after another in one `lax.map` (each
    stops at its own convergence; vmapping would make every one run the slowest one's
    steps). λ is traced: the whole path reuses one program per shape."""
    return jax.lax.map(
        lambda args: _one_problem(*args, alpha, solver, n_src), (D, T, W0, Xv, Yv, colsrc)
    )


@eqx.filter_jit
def _stack_split(D, T, W0, alpha, solver, Xv, Yv, colsrc, n_src, mesh, axes):
    """`_stack` with the sub-problems split over the mesh `axes`: every device solves its own
    one after another (one SPMD program; no collective, the results stay split)."""
    spec = P(axes)

    def local(D, T, W0, Xv, Yv, colsrc, alpha):
        return jax.lax.map(
            lambda args: _one_problem(*args, alpha, solver, n_src), (D, T, W0, Xv, Yv, colsrc)
        )

    run = jax.shard_map(local, mesh=mesh, in_specs=(spec,) * 6 + (P(),), out_specs=spec,
                        check_vma=False)  # fmt: skip
    return run(D, T, W0, Xv, Yv, colsrc, alpha)


def _solve(st: _Stacked, alpha, W0s, solver, n_src, owners):
    """All sub-problems at one λ: new coefficients per stack and the totals (block sums of
    squares `[n_src, n_tgt]`, raw squared residual, held-out squared error, non-zeros, steps)."""
    Ws, sq_t, rss, val, nnz, steps = {}, None, 0.0, 0.0, 0, 0
    for key, members in st.stacks.items():
        D, T, XV, YV, cs, s = st.arrays[key]
        args = (D, T, W0s[key], jnp.asarray(alpha, jnp.float32), solver, XV, YV, cs, n_src)
        if st.split is None:
            W, sq, r, v, z, k = _stack(*args)
        else:  # drop the padding's results
            W, *rest = _stack_split(*args, *st.split)
            sq, r, v, z, k = (np.asarray(x)[: len(members)] for x in rest)
        Ws[key] = W
        sq = np.asarray(sq, np.float64)
        r = np.asarray(r, np.float64)
        for j, i in enumerate(members):
            block = sq[j][:, : owners[i].shape[0]] @ owners[i]  # [n_src, n_tgt]
            sq_t = block if sq_t is None else sq_t + block
            rss += r[j] / s**2 + st.outside[i]
        val += float(np.sum(np.asarray(v, np.float64)))
        nnz += int(np.sum(np.asarray(z)))
        steps = max(steps, int(np.max(np.asarray(k))))
    return Ws, dict(sq=sq_t, rss=rss, val=val, nnz=nnz, steps=steps)


def _path(st, grid, solver, n_src, owners, stop, refine: int, keep_bytes: int = 2**29):
    """The λ path, solved from the largest λ down with warm starts, one λ at a time so it can
    stop early (`stop(records)` true: the selection cannot change any more) and then add
    `refine` λs where the coarse path is degenerate: while some λs of the path add no edge, the
    interval with the most edges entering at once is split at its geometric midpoint, so the
    path resolves the order in which edges enter. Returns the λs (decreasing), one record per
    λ and, when they fit in `keep_bytes`, the coefficients per λ (else only the last)."""
    size = sum(4 * len(v) * k[1] * k[2] for k, v in st.stacks.items())
    keep = size * (len(grid) + refine) <= keep_bytes
    alphas, recs, Ws = [], [], []
    W = st.zeros()
    for i, a in enumerate(grid):
        if i == 0:  # the top of the path zeroes everything (by its definition): no solve
            rec = st.null
        else:
            W, rec = _solve(st, a, W, solver, n_src, owners)
        alphas.append(float(a))
        recs.append(rec)
        Ws.append(W if keep else None)
        if stop(recs):
            break
    if not keep:
        return np.asarray(alphas), recs, Ws, W
    for _ in range(refine):
        counts = [int(np.sum(r["sq"] > 0)) for r in recs]
        flat = sum(c == d and c > 0 for c, d in zip(counts[1:], counts))
        jumps = [
            (counts[i + 1] - counts[i], i)
            for i in range(len(counts) - 1)
            if alphas[i] > alphas[i + 1] * (1 + 1e-3)
        ]
        jump, i = max(jumps, default=(0, -1))
        if flat == 0 or jump < 2:
            break
        a = float(np.sqrt(alphas[i] * alphas[i + 1]))
        Wa, rec = _solve(st, a, Ws[i], solver, n_src, owners)
        alphas.insert(i + 1, a)
        recs.insert(i + 1, rec)
        Ws.insert(i + 1, Wa)
    return np.asarray(alphas), recs, Ws, W


def _loose(solver):
    """The path's solver: 10× the relative tolerance of `solver` (the path only ranks λs and
    orders edge entries; the chosen λ is refitted at `solver`'s own tolerance)."""
    if isinstance(getattr(solver, "rtol", None), float):
        return eqx.tree_at(lambda s: s.rtol, solver, 10 * solver.rtol)
    return solver


def _refit(st, alpha, W0s, solver, n_src, owners):
    """The coefficients on all samples at the chosen λ, warm-started from the path's."""
    return _solve(st, alpha, W0s, solver, n_src, owners)


def _bic(rec, n, k):
    """BIC of a path point: `n·k·log(RSS/(n·k)) + (non-zeros)·log n` over the `k` regressed
    target columns (Zou, Hastie & Tibshirani 2007's degrees of freedom of the Lasso)."""
    return n * k * np.log(max(rec["rss"], 1e-12) / (n * k)) + rec["nnz"] * np.log(n)


def _stopped(select, n_edges, n, k, patience=2):
    """`stop(records)` for `_path`: held-out error or BIC past its minimum for `patience`
    λs (it rises again as λ shrinks: the rest of the path cannot be chosen). `"count"` runs
    the whole path: the λs below the chosen one order the edges outside the circuit."""

    def stop(recs):
        if select == "count":  # the rest of the path orders the edges outside the circuit
            return False
        if select == "heldout":
            crit = [r["val"] for r in recs]
        else:
            crit = [_bic(r, n, k) for r in recs]
        return len(crit) - 1 - int(np.argmin(crit)) >= patience

    return stop


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
    solver=None,
    refine: int | None = None,
    early_stop: bool = True,
    mesh=None,
    target_axis: str | tuple[str, ...] | None = None,
) -> BlockLassoResult:
    """CircuitLasso's block upper-triangular Lasso (Yin et al. 2026, arXiv 2606.16939).

    `sources`: blocks `[n_samples, d_b]` in computation order (a list, or `{name: block}`).
    With `targets=None` the blocks are their own targets and block `j` is regressed on the
    blocks before it (the linear SEM `X = AᵀX + ε`); otherwise `targets` are other blocks and
    `valid[s, t]` (booleans `[n_sources, n_targets]`) says which sources may feed target `t`.
    Columns are centred (and scaled with `scale`); zero-variance ones are dropped with one
    short warning (all names in `dropped`). `groups` (one id per sample, e.g. the example of
    each (example, position) row) keeps held-out splits whole.

    **How it is solved.** Targets with the same set of earlier sources form one multi-output
    sub-problem; one QR of the whole source matrix serves every sub-problem (a prefix of the
    sources needs only that many rows of `R`; `_compress`), so each FISTA step costs
    `|S|² × columns` whatever the number of samples. Sub-problems of similar shape are padded
    and stacked into one compiled program; λ is traced, so the path recompiles nothing.

    **λ.** `alpha`, or chosen on a path by `select` (module docstring). The path runs from the
    smallest λ zeroing everything down to `eps` times it (`n_alphas` points, geometric) and,
    with `early_stop`, stops once the choice cannot change (held-out error or BIC risen for
    two λs in a row; `"count"` runs the whole path, which orders the edges left out). Where
    the path is degenerate (λs adding no edge while elsewhere several edges enter at once), up
    to `refine` (default `n_alphas`) more λs split the intervals where most edges enter at
    once. The path is solved to 10× the solver's relative tolerance; the chosen λ is then
    refitted (on all samples) at the solver's own.

    **Many devices.** `mesh=` (a `jax.sharding.Mesh`) splits the sub-problems over the mesh
    axis `target_axis` (default: its first; a tuple splits over their product): each device
    solves its share, one SPMD program per stack shape; the results equal one device's.
    """
    alpha = _check_alpha(alpha)
    split = None if mesh is None else (mesh, _mesh.check_mesh(mesh, target_axis, "target_axis"))
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
    refine = int(n_alphas) if refine is None else check_int(refine, "refine", 0)
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
    Y = np.concatenate(ztgt, 1)
    colsrc = np.repeat(np.arange(len(src)), widths)
    tgt_w = [z.shape[1] for z in ztgt]
    tgt_off = np.r_[0, np.cumsum(tgt_w)]

    # targets sharing their set of earlier source columns form one sub-problem
    by_mask: dict = {}
    for t, w in enumerate(tgt_w):
        if w and valid[colsrc, t].any():
            by_mask.setdefault(valid[:, t].tobytes(), []).append(t)
    sub = []
    for ts in by_mask.values():
        sel = np.flatnonzero(valid[colsrc, ts[0]])
        cols = np.concatenate([np.arange(tgt_off[t], tgt_off[t + 1]) for t in ts])
        sub.append((sel, cols, ts))
    # owners[i]: [K_i, n_tgt] one-hot target of each column of sub-problem i
    owners = [np.eye(len(tgt))[np.repeat(ts, [tgt_w[t] for t in ts])] for _, _, ts in sub]
    solver = solver if solver is not None else _default_solver()
    n_src = len(src)
    empty = np.zeros((0, X.shape[1]), np.float32), np.zeros((0, Y.shape[1]), np.float32)

    alphas = edge_counts = val_err = bic = steps = None
    entry = np.zeros(valid.shape)
    index = -1
    if not sub:
        alpha = 0.0 if alpha is None else alpha
        final = dict(sq=np.zeros(valid.shape)), {}
        st = None
    elif alpha is None:
        # the λ grid: from the smallest λ that zeroes every coefficient
        amax = max(float(np.abs(X[:, sel].T @ Y[:, cols]).max()) / n for sel, cols, _ in sub)
        amax = amax if amax > 0 else 1.0
        grid = amax * np.geomspace(1.0, float(eps), int(n_alphas))
        held = np.zeros(n, bool)
        if select == "heldout":
            rng = np.random.default_rng(seed)
            ids = np.unique(groups)
            n_val = min(max(1, int(round(val_fraction * len(ids)))), len(ids) - 1)
            held = np.isin(groups, rng.permutation(ids)[:n_val])
            st = _Stacked(
                X[~held], Y[~held], sub, colsrc, n_src, len(tgt), X[held], Y[held], pad_rows=n,
                split=split,
            )  # fmt: skip
        else:
            st = _Stacked(X, Y, sub, colsrc, n_src, len(tgt), *empty, split=split)
        k_reg = sum(cols.size for _, cols, _ in sub)
        stop = _stopped(select, n_edges, n, k_reg) if early_stop else (lambda recs: False)
        alphas, recs, Ws, W_last = _path(st, grid, _loose(solver), n_src, owners, stop, refine)
        on = np.stack([(r["sq"] > 0) & valid for r in recs])
        edge_counts = on.sum((1, 2))
        entry = np.max(on * (alphas / alphas[0])[:, None, None], 0)
        steps = np.asarray([r["steps"] for r in recs])
        if select == "heldout":
            val_err = np.asarray([r["val"] for r in recs]) / max(1, int(held.sum()) * Y.shape[1])
            index = int(np.argmin(val_err))
        elif select == "count":
            hit = np.flatnonzero(edge_counts >= int(n_edges))
            index = int(hit[0]) if hit.size else len(alphas) - 1
        else:
            bic = np.asarray([_bic(r, n, k_reg) for r in recs])
            index = int(np.argmin(bic))
        alpha = float(alphas[index])
        W_at = Ws[index] if Ws[index] is not None else W_last
        if select == "heldout":  # the path saw the training examples: refit on all of them
            # the same shapes as the path's (held-out rows evaluated, not used): no new compile
            path_st = st
            st = _Stacked(X, Y, sub, colsrc, n_src, len(tgt), X[held], Y[held], split=split)
            W_at = st.warm(W_at, path_st)
        final = _refit(st, alpha, W_at, solver, n_src, owners)
    else:
        st = _Stacked(X, Y, sub, colsrc, n_src, len(tgt), *empty, split=split)
        final = _refit(st, alpha, st.zeros(), solver, n_src, owners)
    # coefficients in full column coordinates, and block norms
    Wf, rec = final
    A_kept = np.zeros((X.shape[1], Y.shape[1]), np.float32)
    if st is not None:
        for key, members in st.stacks.items():
            W = np.asarray(Wf[key])
            for j, i in enumerate(members):
                sel, cols, _ = sub[i]
                A_kept[np.ix_(sel, cols)] = W[j, : sel.size, : cols.size]
    norms = np.sqrt(np.maximum(rec["sq"], 0.0)) * valid
    support = norms > 0
    pos = norms[support]
    tiny = 1e-3 * (pos.min() if pos.size else 1.0)
    scores = np.where(support, norms, tiny * entry) * valid
    coef = _expand(A_kept, keep_src, keep_tgt)
    return BlockLassoResult(
        src_names, tgt_names, scores, support, coef,
        np.asarray(alphas if alphas is not None else [alpha]), float(alpha), index,
        None if index < 0 else select, edge_counts, val_err, bic, tuple(dropped), n, steps,
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
    grouped into one compiled call). Components beyond a block's rank (variance below 1e-6 of
    its first, float32 round-off) are left out: they are not columns of the data."""
    if r is None:
        return blocks
    out = list(blocks)
    widths = sorted({b.shape[1] for b in blocks if b.shape[1] > r})
    for w in widths:
        idx = [i for i, b in enumerate(blocks) if b.shape[1] == w]
        red = np.asarray(_pca(jnp.stack([jnp.asarray(blocks[i]) for i in idx]), int(r), key))
        for i, x in zip(idx, red):
            var = (x * x).sum(0)
            out[i] = x[:, var > 1e-6 * var[0]] if var[0] > 0 else x
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

    outs = np.asarray(source_outputs(model, tokens, g), np.float32)  # [B, S, T, D]
    B, S, T, D = outs.shape
    sources = [outs[:, s].reshape(B * T, D) for s in range(S)]
    logits, acts = _target_acts(model, tokens)
    acts = {k: np.asarray(v, np.float32) for k, v in acts.items()}
    targets = []
    for name in g.targets:
        if name == "logits":
            x = np.asarray(logits, np.float32)
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
    acts = _site_acts(model, tokens, tuple(names))
    acts = {k: np.asarray(v, np.float32) for k, v in acts.items()}
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
            z = np.asarray(enc(jnp.asarray(rows.reshape(rows.shape[0], -1))), np.float32)
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
    scale: bool | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    solver=None,
    progress: bool = False,
    target: str | None = None,
    mesh=None,
    target_axis: str | tuple[str, ...] | None = None,
) -> CircuitLassoResult:
    """CircuitLasso (Yin et al. 2026, arXiv 2606.16939): a circuit from forward passes only.

    `clean` (and `corrupt`, optional; or a `jaxcirc.tasks.Task` as `clean`) are `[batch,
    seq]` tokens; every (example, position) of both is one observational sample.

    **Target.** With a behaviour (`metric`, or the Task's) that has a per-example form, the
    default `target="task"` returns the task circuit (`jaxcirc.methods._task_circuit`, §3.3):
    the skeleton fitted at rank 16 without column scaling (on the pairs' clean − corrupt
    changes when `corrupt` is given), and a relevance passed back from the behaviour's readout
    through its coefficients and the heads' attention; edges score their
    relevance, the circuit is those above the mean (or the top `n_edges`; `select` then only
    chooses the skeleton's λ). `target="skeleton"` (the default without a metric, or with one
    that has no per-example form, which warns) returns the plain dependency skeleton: block
    norms of `A`, the circuit its support at the chosen λ. `granularity`:

    - `"components"`: graph sources regressed into graph targets (module docstring); sources
      wider than `max_columns // n_sources` (or `rank`) are reduced to their top principal
      components, targets to `target_rank` (default: at most 32 columns each).
    - `"neurons"`: raw units of `sites` (TransformerLens names in computation order; head
      sites split per head), each block regressed on the earlier ones.
    - `"sae"`: `encoder(acts [rows, d]) -> [rows, n_features]` of each site (one callable or
      `{site: callable}`), e.g. a pretrained SAE's encoder.

    **Speed.** The regression's cost grows with the number of columns: `rank` (principal
    components per source; `target_rank` per target) trades accuracy for time. On a
    GPT-2-small-shaped model (CPU, 2 heavily loaded cores) rank 1 took 14 s end to end with 8
    prompt pairs and 24 s with 32 (EAP-IG with 5 steps: 54 s and 179 s), rank 2 31 s and 33 s;
    on the tracr scorecard (held-out λ) mean edge AUROC is 0.85 at rank 1, 0.88 at rank 2 and
    about 0.98 at full width, against 0.83 for that EAP-IG (`benchmarks/RESULTS.md`). The default
    solver stops at a duality gap of 1e-3 of the objective (the λ path at 1e-2).

    Block scores map to the edges of `graph(model)` (`scores`; for site blocks through the
    node each site belongs to: head sites to `L{l}H{h}` and its q/k/v inputs, `mlp_*` to
    `MLP{l}`, `embed` and `ln_final`), λ as in `block_lasso`; `mesh=`/`target_axis=` split its
    sub-problems over devices, as there.
    """
    check_choices((granularity,), GRANULARITIES, "granularity", one="granularity")
    if hasattr(clean, "clean") and hasattr(clean, "corrupt"):
        if corrupt is not None:
            raise TypeError("give a Task alone, or clean and corrupt tokens, not both")
        metric = clean.metric if metric is None else metric
        clean, corrupt = clean.clean, clean.corrupt
    target = _task.task_target(target, metric, granularity)
    scale = target != "task" if scale is None else bool(scale)
    if target == "task":  # the relevance needs a coarse skeleton only (module _task_circuit)
        rank = _task.RANK if rank is None else rank
        target_rank = _task.RANK if target_rank is None else target_rank
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
    paired_task = target == "task" and corrupt is not None
    # held-out splits keep an example's rows (a pair's, when the pairs' changes are regressed)
    groups = np.repeat(np.arange(tokens.shape[0] // (2 if paired_task else 1)), T)
    groups = np.tile(groups, 2) if paired_task else groups
    if granularity == "components":
        src, tgt = _component_blocks(model, g, tokens)
        if paired_task:  # the task's skeleton regresses the pairs' changes (_task_circuit)
            src, tgt = _task.paired_changes(src), _task.paired_changes(tgt)
        r_src = rank if rank is not None else (
            None if len(src) * src[0].shape[1] <= max_columns else max(2, max_columns // len(src))
        )  # fmt: skip
        r_tgt = target_rank if target_rank is not None else 32
        src, tgt = _reduce(src, r_src, key), _reduce(tgt, r_tgt, key)
        src_blocks, tgt_blocks = dict(zip(g.sources, src)), dict(zip(g.targets, tgt))
        valid = g.valid
        reduced = src, tgt
    else:
        blocks, labels, nodes = _site_blocks(model, tokens, sites, encoder, granularity)
        if rank is not None:
            blocks = _reduce(blocks, rank, key)
        src_blocks, tgt_blocks, valid = dict(zip(labels, blocks)), None, None
    jax.block_until_ready(0)
    collected = time.perf_counter()
    _step(bar, "regress")
    fit = block_lasso(
        src_blocks, tgt_blocks, valid, alpha=alpha, select=select,
        n_edges=None if target == "task" else n_edges,
        n_alphas=n_alphas, eps=eps, scale=scale, val_fraction=val_fraction,
        groups=groups, seed=seed, solver=solver, mesh=mesh,
        target_axis=target_axis,
    )  # fmt: skip
    _step(bar, "circuit")
    behaviour, regressed = None, time.perf_counter()
    if target == "task":
        values, behaviour = _task.task_relevance(
            model, g, clean, corrupt, metric, *reduced, fit.coef, scale=scale
        )
        circ = _task.above_mean(values, g.valid)
    elif granularity == "components":
        values = fit.block_scores
        circ = fit.support & g.valid
    else:
        values = _edge_scores_from_nodes(g, fit.block_scores, nodes)
        support = _edge_scores_from_nodes(g, fit.support.astype(float), nodes)
        circ = None if support is None else support > 0
    scores = circuit = None
    if values is not None:
        scores = Scores(jnp.asarray(values, jnp.float32), g)
        count = fit.select == "count" and circ.sum() > int(n_edges)
        if n_edges is not None and (target == "task" or count):
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
        fit, {"collect": collected - start, "regress": regressed - collected,
              **({"relevance": done - regressed} if target == "task" else {})}, behaviour,
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
    x = np.asarray(acts, np.float32)[:, position].reshape(tokens.shape[0], -1)
    z = np.asarray(encoder(jnp.asarray(x)), np.float32) if encoder is not None else x
    target = np.asarray(y(logits) if callable(y) else y, np.float32)
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
