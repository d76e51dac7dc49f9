"""CircuitLasso's task circuit: the part of the dependency skeleton that leads to a behaviour.

Yin et al. 2026 (arXiv 2606.16939) fit a sparse linear SEM between components, the *skeleton*
(`block_lasso`: each target's read regressed on the earlier sources' outputs), and, §3.3,
include the behaviour `y` as a target read from the components. The skeleton alone finds every
real dependency, including those the behaviour never uses. `task_relevance` keeps the part of
it that leads to `y` by passing a relevance backwards from `y`, through the skeleton's
coefficients, on the clean run's rows `r = (example b, position p)`; `Δ` is the clean-minus-
corrupt difference of a pair (the deviation from the mean over examples without corrupt
prompts). Only forward passes: no gradient flows through the network.

**The skeleton of a paired task is fitted on the pairs' changes.** With corrupt prompts every
block (source outputs and target reads) is replaced by its within-pair change `Δ` (as `[Δ;
−Δ]`, `paired_changes`), so both the principal components that reduce each block and the
regression `ΔX_t ≈ Σ_s ΔZ_s A[s, t]` describe how the task's change moves through the model.
Fitted on the raw rows instead, the components of a block are dominated by what every prompt
shares (the first position, the template's positions), and a head whose output carries the
task's change in a low-variance direction (IOI's S-inhibition heads, feeding the name movers'
queries) drops out: on IOI with SmolLM2-135M the change-fitted skeleton's 400-edge circuit has
faithfulness 0.87 where the raw-row one had 0.29 (`benchmarks/RESULTS.md`).

1. **The behaviour's readout (its target-inclusive coefficients).** `y_b` is the metric's
   per-example value; it reads the residual stream `x` only through the final norm, the
   unembedding and the metric, so its coefficient on source `s` at row `r` is known: `g_r =
   ∂y_b/∂x_r` (for a logit difference, `W_U[:, a] - W_U[:, d]` over the final norm's scale).
   Edge `s → logits` gets the direct relevance `|g_r · Δo_{s,r}|` (`o` the source's output),
   summed over positions and averaged over examples. (A fitted regression of `y` on the
   readouts is not identifiable on clean/corrupt pairs: every component that changes with the
   corruption predicts `y` equally well, and the Lasso keeps an arbitrary one of them.)
2. **Through the skeleton.** Target `t`'s relevance at row `r` is split over its sources in
   proportion to the change each explains, `e_{s,t,r} = ‖ΔZ_{s,r} A[s, t]‖` (`Z` the reduced,
   centred source blocks the skeleton was fitted on, `A` its coefficients), divided by
   `Σ_s e_{s,t,r}`: relevance is conserved on its way down (in a 30-layer model any leak per
   hop would leave the edges near the embedding with none). A row no coefficient explains (the
   target has no support at the chosen λ) is shared by the sources' own changes `‖ΔZ_{s,r}‖`.
   An MLP's input change is measured after the MLP's own least-squares map from its (reduced)
   input to its output, so changes the MLP ignores count less.
3. **Inside the nodes.** Nodes are visited in reverse computation order; a node's relevance per
   row is the sum of its edges' row relevances (plus its direct one). An MLP passes it to its
   input at the same row. A head splits it with its attention, from the two runs'
   activations: the change of its mixed values `Δz_i = Σ_j P_ij Δv_j + Σ_j ΔP_ij v'_j` (exact)
   divides row `i`'s relevance into a value part, sent to the value rows `j` in proportion to
   `P_ij ‖Δv_j‖`, and a pattern part, sent to the query at `i` and the key rows `j` in
   proportion to `|ΔP_ij| ‖Δq_i‖ ‖k_j‖` and `|ΔP_ij| ‖q'_i‖ ‖Δk_j‖` (the sizes of the two
   terms of the score change `Δq_i·k_j + q'_i·Δk_j`). Grouped key/value targets sum their heads.

Edge `s → t`'s score is its relevance summed over positions and averaged over examples. The
circuit is the edges scoring above the mean score of the graph's edges (scale-free; no
knowledge of the truth); every such edge lies on a path of non-zero skeleton coefficients into
the behaviour. `circuit_lasso` fits this skeleton without column scaling by default
(`scale=False`): the model reads the sum of the sources, so in raw units every source feeding a
target has the same true coefficients and the Lasso shares a target's change over collinear
sources by size instead of by their standardised (noise-inflated) variance.
"""

from __future__ import annotations

import dataclasses
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..graph import graph_states
from ..metrics import is_example_mean
from ..models._site import nearest

TARGETS = ("task", "skeleton")
RANK = 16  # principal components per source and per target block of the task's skeleton


@dataclasses.dataclass(frozen=True)
class Behaviour:
    """The behaviour the task circuit leads to: `y` `[n]` the metric per example (clean, then
    corrupt), `readout` `[n_sources]` each source's direct readout change `g · Δo` (summed
    over positions, mean over examples; the signed direct effect the `logits` edges score)."""

    y: np.ndarray
    readout: np.ndarray


def check_metric_per_example(metric) -> None:
    """The task circuit reads the metric per example: a clear error otherwise."""
    if not _per_example(metric):
        raise ValueError(
            f"circuit_lasso's task circuit reads the metric's per-example values, but "
            f"{type(metric).__name__} has no per_example form (jaxcirc.metrics.is_example_mean "
            "is False): bind a one-position metric (jaxcirc.metrics.bind), give a Task, or pass "
            "target='skeleton' for the dependency skeleton alone"
        )


@eqx.filter_jit
def _readout(model, g, tokens, metric, rows):
    """Source outputs `[n, S, T, D]`, per-example `y [n]`, and `∂y_b/∂x_b [n, T, D]` at the
    final residual stream `x` (the sum of the source outputs and the biases)."""

    def states(t):
        outs, biases = graph_states(model, g, model.embed_tokens(t)[0])
        return outs, biases[-1]

    outs, bias = jax.vmap(states)(tokens)
    x = outs.sum(1) + bias[:, None, :]

    def total(x):
        y = metric.per_example(jax.vmap(model.logits_at, (0, None, 0))(x, None, tokens), rows)
        return y.sum(), y

    grad, y = jax.grad(total, has_aux=True)(x)
    return outs, y, grad


@eqx.filter_jit
def _acts(model, tokens, names):
    from ..models._transformer import forward

    return jax.vmap(lambda t: {k: forward(model, t)[1].values[k] for k in names})(tokens)


def _standardised(b, scale=True) -> np.ndarray:
    """Columns centred and (with `scale`) scaled as `block_lasso` does; constant ones 0."""
    b = np.asarray(b, np.float64)
    sd = b.std(0)
    div = np.where(sd > 0, sd, 1.0) if scale else 1.0
    return np.where(sd > 0, (b - b.mean(0)) / div, 0.0)


def _node_map(Z_in, Z_out, ridge=1e-3) -> np.ndarray:
    """Least squares `Z_out ≈ Z_in M` (standardised columns, a small ridge), `[k_in, k_out]`."""
    k = Z_in.shape[1]
    gram = Z_in.T @ Z_in + ridge * Z_in.shape[0] * np.eye(k)
    return np.linalg.solve(gram, Z_in.T @ Z_out)


def _layer(target: str) -> int:
    return int(target[1:].split("H" if "H" in target.split(".")[0] else "KV")[0])


def _kv_node(g, layer: int, n_kv: int, head: int) -> str:
    """The node whose key/value targets head `head` of `layer` reads: itself, or its group."""
    if f"L{layer}H{head}.k" in g.targets:
        return f"L{layer}H{head}"
    n_heads = sum(1 for t in g.targets if t.startswith(f"L{layer}H") and t.endswith(".q"))
    return f"L{layer}KV{head // (n_heads // n_kv)}"


def _first_of_group(g, layer: int, n_kv: int, head: int) -> bool:
    n_heads = sum(1 for t in g.targets if t.startswith(f"L{layer}H") and t.endswith(".q"))
    return head % (n_heads // n_kv) == 0


def _head_split(acts, ref, layer, head, rho):
    """A head's output relevance `rho [B, T]` split over its query, key and value inputs per
    row, from the clean run and the reference run (corrupt, or the mean): the change of the
    head's mixed values `Δz_i = Σ_j P(i,j) Δv_j + Σ_j ΔP(i,j) v'_j` (exact) splits `rho` into a
    value part and a pattern part; the value part goes to the keys `j` in proportion to
    `P(i,j) ‖Δv_j‖`, the pattern part to the query at `i` and the keys `j` in proportion to
    `|ΔP(i,j)| ‖Δq_i‖ ‖k_j‖` and `|ΔP(i,j)| ‖q'_i‖ ‖Δk_j‖` (bounds of the two terms of the
    score change `Δq_i·k_j + q'_i·Δk_j`). **Returns:** `(ρ_q, ρ_k, ρ_v, n_kv_heads)`."""
    name = f"blocks.{layer}.attn.hook_"
    q, k, v = (acts[name + x] for x in "qkv")  # [B, T, heads, d]
    n_kv = k.shape[2]
    grp = head // (q.shape[2] // n_kv)
    P, Pr = acts[name + "pattern"][:, head], ref[name + "pattern"][:, head]  # [B, Tq, Tk]
    q, qr = q[:, :, head], ref[name + "q"][:, :, head]
    k, kr = k[:, :, grp], ref[name + "k"][:, :, grp]
    v, vr = v[:, :, grp], ref[name + "v"][:, :, grp]
    dv, dq, dk, dP = v - vr, q - qr, k - kr, P - Pr
    z_v = np.einsum("bij,bjd->bid", P, dv)
    z_p = np.einsum("bij,bjd->bid", dP, np.broadcast_to(vr, v.shape))
    a_v, a_p = np.linalg.norm(z_v, axis=-1), np.linalg.norm(z_p, axis=-1)
    f_v = a_v / np.maximum(a_v + a_p, 1e-30)
    # value part: to the rows whose values changed, weighted by attention
    w_v = P * np.linalg.norm(dv, axis=-1)[:, None, :]
    w_v = w_v / np.maximum(w_v.sum(-1, keepdims=True), 1e-30)
    rho_v = np.einsum("bi,bij->bj", rho * f_v, w_v)
    # pattern part: to the query and the keys whose changes moved the scores
    norm = lambda x: np.linalg.norm(np.broadcast_to(x, q.shape), axis=-1)
    w_q = np.abs(dP) * norm(dq)[:, :, None] * norm(k)[:, None, :]
    w_k = np.abs(dP) * norm(qr)[:, :, None] * norm(dk)[:, None, :]
    tot = np.maximum(w_q.sum(-1) + w_k.sum(-1), 1e-30)
    part = rho * (1.0 - f_v) / tot
    rho_q = part * w_q.sum(-1)
    rho_k = np.einsum("bi,bij->bj", part, w_k)
    return rho_q, rho_k, rho_v, n_kv


def task_relevance(model, g, clean, corrupt, metric, src_blocks, tgt_blocks, coef, *, scale=True):
    """Edge relevance `[n_sources, n_targets]` for the behaviour `metric` (module docstring),
    and a `Behaviour` (`y` per example, the mean direct readout change per source).

    `src_blocks`: the (reduced) source blocks the skeleton was fitted on, rows in (example,
    position) order: with `corrupt`, the pairs' changes `[Δ; −Δ]` (`paired_changes`), else
    the clean rows; `coef`: the skeleton's standardised `A`
    (`BlockLassoResult.coef`, centred and, with `scale`, scaled as `block_lasso` did), its
    target columns from the blocks `tgt_blocks` (the reduced targets), in `g.targets` order.
    """
    B, T = clean.shape
    paired = corrupt is not None
    tokens = jnp.concatenate([clean, corrupt]) if paired else clean
    rows = jnp.concatenate([jnp.arange(B)] * (2 if paired else 1))
    outs, y, grad = (np.asarray(a, np.float64) for a in _readout(model, g, tokens, metric, rows))
    S = g.n_sources
    # 1. the behaviour's readout: direct relevance per clean row
    delta_out = outs[:B] - outs[B:] if paired else outs - outs.mean(0)
    readout = np.einsum("bstd,btd->bst", delta_out, grad[:B])  # Δφ per row
    direct = np.abs(readout)
    # 2. source changes per row, in the skeleton's (reduced) coordinates
    widths = [b.shape[1] for b in src_blocks]
    offsets = np.r_[0, np.cumsum(widths)]
    Z = [_standardised(b, scale) for b in src_blocks]
    n_rows = B * T
    t_off = np.r_[0, np.cumsum([b.shape[1] for b in tgt_blocks])]
    # an MLP's input change counts through the MLP's own linearised map (a node regression)
    maps = {}
    for t, name in enumerate(g.targets):
        if name.startswith("MLP") and name in g.sources:
            n = g.sources.index(name)
            raw = outs[:, n].reshape(-1, outs.shape[-1])  # [rows, d_model], as the blocks
            raw = paired_changes([raw])[0] if paired else raw
            maps[t] = _node_map(_standardised(tgt_blocks[t], scale), raw - raw.mean(0))
    owner = np.repeat(np.arange(g.n_targets), np.diff(t_off))
    onehot = np.eye(g.n_targets, dtype=np.float32)[owner]  # [K, n_targets]
    # ‖ΔZ_s A[s, t]‖ per (source, target, clean row)
    explained = np.zeros((S, g.n_targets, n_rows), np.float32)
    for s in range(S):
        dz = Z[s][:n_rows]
        block = coef[offsets[s] : offsets[s + 1]]
        if not block.any():
            continue
        c = (dz @ block).astype(np.float32)  # [rows, K]
        explained[s] = np.sqrt((c**2) @ onehot).T
        for t, m in maps.items():
            explained[s, t] = np.linalg.norm(c[:, owner == t] @ m, axis=1)
    explained *= g.valid[:, :, None]
    # a row that changed but that no skeleton coefficient explains (a sparse λ) is shared by
    # the sources' own changes: the model reads their sum, so each feeds it alike per unit
    total = explained.sum(0)  # [n_targets, rows]
    size = np.stack([np.linalg.norm(z[:n_rows], axis=1) for z in Z]).astype(np.float32)
    fallback = size[:, None, :] * g.valid[:, :, None] * (total == 0)[None]
    explained += fallback
    total = explained.sum(0)
    share = explained / np.where(total > 0, total, 1.0)[None]
    share = share.reshape(S, g.n_targets, B, T)
    # 3. backwards, node by node in reverse computation order, through the heads' attention
    layers = sorted({_layer(t) for t in g.targets if "." in t})
    kinds = ("q", "k", "v", "pattern")
    names = tuple(f"blocks.{layer}.attn.hook_{k}" for layer in layers for k in kinds)
    acts = {k: np.asarray(v, np.float64) for k, v in _acts(model, tokens, names).items()}
    ref = {k: v[B:] if paired else v.mean(0, keepdims=True) for k, v in acts.items()}
    acts = {k: v[:B] for k, v in acts.items()}
    rho = direct.copy()  # [B, S, T]: each source's output relevance per clean row
    rho_in = np.zeros((g.n_targets, B, T))  # each target's relevance per clean row
    scores = np.zeros((S, g.n_targets))
    logit_t = g.targets.index("logits")
    scores[:, logit_t] = direct.sum(2).mean(0) * g.valid[:, logit_t]
    index = {name: t for t, name in enumerate(g.targets)}
    for s in reversed(range(S)):
        node = g.sources[s]
        if node.startswith("MLP") and node in index:
            rho_in[index[node]] += rho[:, s]
            ready = [index[node]]
        elif node.startswith("L") and "H" in node:
            layer, head = (int(x) for x in node[1:].split("H"))
            q, k, v, kv = _head_split(acts, ref, layer, head, rho[:, s])
            kv_node = _kv_node(g, layer, kv, head)
            rho_in[index[f"{node}.q"]] += q
            rho_in[index[f"{kv_node}.k"]] += k
            rho_in[index[f"{kv_node}.v"]] += v
            ready = [index[f"{node}.q"]]
            if kv_node == node or _first_of_group(g, layer, kv, head):
                ready += [index[f"{kv_node}.k"], index[f"{kv_node}.v"]]
        else:
            continue
        for t in ready:
            flow = share[:, t] * rho_in[t][None]  # [S, B, T]
            rho += flow.transpose(1, 0, 2)
            scores[:, t] = flow.sum(2).mean(1) * g.valid[:, t]
    return scores, Behaviour(y, readout.sum(2).mean(0))


def paired_changes(blocks: list) -> list:
    """Blocks `[2n, d]` (clean rows, then the corrupt rows of the same pairs) as the pairs'
    changes `[Δ; −Δ]`, `Δ = clean − corrupt`: their mean is zero, so `block_lasso`'s centring
    leaves them as they are and its fit is the regression of the changes through the origin
    (and `_reduce`'s principal components those of the changes)."""
    out = []
    for b in blocks:
        n = b.shape[0] // 2
        d = b[:n] - b[n:]
        out.append(np.concatenate([d, -d]))
    return out


def task_target(target, metric, granularity) -> str:
    """Which circuit `circuit_lasso` returns. `None`: `"task"` for components with a metric
    that has a per-example form, else `"skeleton"` (with a warning when a metric was given but
    cannot be read per example). An explicit `"task"` that cannot be honoured is an error."""
    if target is None:
        if metric is None or granularity != "components":
            return "skeleton"
        if not _per_example(metric):
            warnings.warn(
                f"circuit_lasso: the metric {type(metric).__name__} has no per-example form "
                "(jaxcirc.metrics.is_example_mean is False), so the task circuit cannot read "
                "it: returning the dependency skeleton (pass target='skeleton' to say so)",
                stacklevel=3,
            )
            return "skeleton"
        return "task"
    if target not in TARGETS:
        raise ValueError(
            f"unknown target {target!r}{nearest(str(target), TARGETS)}; choices: {TARGETS}"
        )
    if target == "task":
        if metric is None:
            raise ValueError(
                "target='task' needs the behaviour: a metric, or a Task (which carries one); "
                "pass target='skeleton' for the dependency skeleton alone"
            )
        if granularity != "components":
            raise ValueError(
                f"target='task' maps components to graph edges; granularity={granularity!r} "
                "has no task circuit (use granularity='components', or target='skeleton')"
            )
        check_metric_per_example(metric)
    return target


def _per_example(metric) -> bool:
    return is_example_mean(metric) and hasattr(metric, "per_example")


def above_mean(values, valid) -> np.ndarray:
    """The edges whose relevance exceeds the mean relevance of the graph's edges."""
    v = np.where(valid, values, 0.0)
    return (v > v[valid].mean()) & valid
