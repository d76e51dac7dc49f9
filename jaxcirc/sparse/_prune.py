"""Task-circuit pruning of weight-sparse transformers (Gao et al. 2025, arXiv 2511.13653).

Nodes are the channels of eight locations per layer L (those the model has): `attn_in`
(`blocks.L.ln1.hook_normalized`), `q`/`k`/`v` (`[heads, d_head]`), `attn_out`, `mlp_in`
(`blocks.L.ln2.hook_normalized`), `mlp_neuron` (`blocks.L.mlp.hook_post`) and `mlp_out`. A
pruned node carries its mean over pretraining tokens: `x̃ = m ⊙ x + (1 − m) ⊙ μ`, run through
the library's `Mean` intervention (masks are array leaves: a new mask never recompiles).

`prune` learns one logit `τ` per node (`m = [τ ≥ 0]` forward, `σ'(τ/T)/T` backward) against
the task loss plus `k_coef · Σ m` with AdamW in one compiled `lax.scan`, then bisects over `k`
for the smallest top-`k` set (by `τ`) whose task loss, after a fitted logit scale and shift,
is at most `target_loss`. The task loss is the binary cross-entropy of answer vs distractor at
each clean prompt's last position, `softplus(−(a·Δ + b·o))` with `Δ` the logit difference. The
paper fits a logit scale and shift (16 L-BFGS steps). A shift of every logit cancels in `Δ`, so
the shift `b` here is a bias between the task's two tokens: `o = +1` on rows whose answer is the
smaller id, `−1` on the others, and `b` is fitted only for a task of exactly two tokens (the
binary tasks; `o = 0` otherwise). It matters where the corpus prefers one token in both
contexts: after `f(g(a, b` the standard library continues with `)` more often than with `))`,
so a model can tell the depths apart (`Δ` rises from depth 1 to depth 2) and still put `)` first
at both. `a ≥ 0` and `b` take 16 damped Newton steps from `(1, 0)`.
Edges are nonzero weights between two kept nodes (W_Q/W_K/W_V, W_O, W_in, W_out);
residual-stream links are identities, not weights, and are not counted.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array

from .._checks import check_float, check_int
from .._progress import progress_bar, tick
from ..interventions import intervene
from ..interventions._library import Mean
from ..models._replacement import site_table
from ..models._site import nearest

SITES = {
    "attn_in": "ln1.hook_normalized",
    "q": "attn.hook_q",
    "k": "attn.hook_k",
    "v": "attn.hook_v",
    "attn_out": "hook_attn_out",
    "mlp_in": "ln2.hook_normalized",
    "mlp_neuron": "mlp.hook_post",
    "mlp_out": "hook_mlp_out",
}
FIT_STEPS = 16


def heaviside_ste(tau: Array, temperature: float | Array) -> Array:
    """`[τ ≥ 0]` forward; backward the sigmoid-derivative straight-through `σ'(τ/T)/T`."""
    soft = jax.nn.sigmoid(tau / temperature)
    hard = (tau >= 0).astype(tau.dtype)
    return soft + jax.lax.stop_gradient(hard - soft)


def locations(model) -> dict[str, str]:
    """`{"L0.attn_in": "blocks.0.ln1.hook_normalized", ...}`: the node locations `model` has,
    in computation order. A model without norms has no `attn_in`/`mlp_in`; an attention-only
    model has no MLP locations."""
    table = site_table(model)
    out = {}
    for layer in range(model.cfg.n_layers):
        for loc, suffix in SITES.items():
            name = f"blocks.{layer}.{suffix}"
            if name in table:
                out[f"L{layer}.{loc}"] = name
    return out


def _check_names(model, names, what: str) -> dict[str, str]:
    locs = locations(model)
    for name in names:
        if name not in locs:
            raise ValueError(
                f"{what}: unknown location {name!r}{nearest(name, locs)}; this model's "
                f"locations: {list(locs)}"
            )
    return locs


def _check_means(model, means) -> dict[str, str]:
    locs = locations(model)
    for name in locs:
        if name not in means:
            raise ValueError(
                f"means has no location {name!r}; it holds {sorted(means)} (compute them with "
                "node_means(model, tokens))"
            )
    _check_names(model, means, "means")
    return locs


def node_means(model, tokens, *, batch_size: int = 64) -> dict[str, Array]:
    """The per-channel mean of every node location over `tokens [n, seq]` (all positions)."""
    tokens = model.check_tokens(tokens, name="tokens", ndim=2)
    check_int(batch_size, "batch_size", 1)
    locs = locations(model)

    @eqx.filter_jit
    def sums(model, chunk):
        acts = jax.vmap(model.run)(chunk)[1]
        return {loc: acts[site].astype(jnp.float32).sum((0, 1)) for loc, site in locs.items()}

    total = None
    for start in range(0, tokens.shape[0], batch_size):
        part = sums(model, tokens[start : start + batch_size])
        total = part if total is None else jax.tree.map(jnp.add, total, part)
    count = tokens.shape[0] * tokens.shape[1]
    return {loc: v / count for loc, v in total.items()}


def masked_model(model, means, masks):
    """`model` with every location replaced by `m ⊙ x + (1 − m) ⊙ μ` (`Mean` interventions)."""
    locs = locations(model)
    return intervene(
        model,
        {locs[n]: Mean(means[n], mask=1.0 - jnp.asarray(m, jnp.float32)) for n, m in masks.items()},
    )


def _last(task):
    answer, distractor = jnp.asarray(task.answer), jnp.asarray(task.distractor)
    if answer.ndim != 1:
        raise ValueError(
            f"prune needs one answer and one distractor id per row; got answer shape "
            f"{list(answer.shape)} (id sets are not supported)"
        )
    return task.clean, task.lengths - 1, answer, distractor


def _check_task(model, task):
    vocab = model.cfg.d_vocab
    for what in ("answer", "distractor"):
        ids = np.asarray(getattr(task, what))
        bad = ids[(ids < 0) | (ids >= vocab)]
        if bad.size:
            raise ValueError(
                f"task {what} id {int(bad[0])} is outside the model's vocabulary (d_vocab = "
                f"{vocab}, ids 0..{vocab - 1})"
            )
    model.check_tokens(task.clean, name="task.clean", ndim=2)
    return _last(task)


def _margins(model, means, masks, tokens, last, answer, distractor):
    logits = jax.vmap(masked_model(model, means, masks))(tokens)
    row = logits[jnp.arange(tokens.shape[0]), last]
    take = lambda ids: jnp.take_along_axis(row, ids[:, None], 1)[:, 0]
    return take(answer) - take(distractor)


def _side(answer, distractor):
    """`o`: +1 on rows whose answer is the task's smaller token id, −1 on the others, for a task
    of exactly two tokens; zeros otherwise (no bias is fitted)."""
    lo = jnp.minimum(answer.min(), distractor.min())
    hi = jnp.maximum(answer.max(), distractor.max())
    two = (lo != hi) & jnp.all((answer == lo) | (answer == hi)) & jnp.all(answer != distractor)
    two = two & jnp.all((distractor == lo) | (distractor == hi))
    return jnp.where(two, jnp.where(answer == lo, 1.0, -1.0), 0.0)


def _fit(delta, side):
    """The logit scale `a ≥ 0` and token bias `b` minimising `mean softplus(−(a·Δ + b·o))`: 16
    damped Newton steps from `(1, 0)` (each moves a parameter by at most 1), or `(0, 0)` (loss
    log 2) where they end above it."""
    feats = jnp.stack([delta, side], 1)

    def step(ab, _):
        z = feats @ ab
        grad = -(jax.nn.sigmoid(-z)[:, None] * feats).mean(0)
        w = jax.nn.sigmoid(z) * jax.nn.sigmoid(-z)
        hess = (feats.T * w) @ feats / delta.shape[0] + 1e-6 * jnp.eye(2)
        ab = ab - jnp.clip(jnp.linalg.solve(hess, grad), -1.0, 1.0)
        return ab.at[0].set(jnp.maximum(ab[0], 0.0)), None

    ab = jax.lax.scan(step, jnp.array([1.0, 0.0], jnp.float32), None, length=FIT_STEPS)[0]
    # the clipped steps may stop short where no scale helps; (0, 0) gives log 2
    worse = jax.nn.softplus(-(feats @ ab)).mean() > jnp.log(2.0)
    return jnp.where(worse, jnp.zeros(2, jnp.float32), ab)


def _scores(delta, scale=1.0, shift=0.0, side=0.0):
    """`(loss, accuracy)` of the calibrated margins `z = scale·Δ + shift·o`; the accuracy
    counts `z > 0` (`Δ > 0` where the scale is 0)."""
    z = scale * delta + shift * side
    right = jnp.where(scale > 0, z > 0, delta > 0)
    return jax.nn.softplus(-z).mean(), right.mean()


@eqx.filter_jit
def _evaluate(model, means, masks, tokens, last, answer, distractor, fit):
    delta = _margins(model, means, masks, tokens, last, answer, distractor)
    side = _side(answer, distractor)
    params = _fit(delta, side) if fit else jnp.array([1.0, 0.0])
    loss, acc = _scores(delta, params[0], params[1], side)
    return loss, acc, params


class TaskCircuit(eqx.Module):
    """The result of `prune`: boolean node `masks` per location, the trained `tau`, the
    circuit's task `loss` (after the fitted `scale`, `shift`) and `accuracy`, `n_nodes`,
    `n_edges` (nonzero weights between kept nodes), `losses` (the training curve), `k`."""

    masks: dict[str, Array]
    tau: dict[str, Array]
    loss: float
    accuracy: float
    scale: float
    shift: float
    n_nodes: int
    n_edges: int
    losses: Array
    target_loss: float


def _flat(tree, locs):
    return jnp.concatenate([jnp.ravel(tree[n]) for n in locs])


def _unflat(flat, like, locs):
    out, start = {}, 0
    for n in locs:
        size = like[n].size
        out[n] = flat[start : start + size].reshape(like[n].shape)
        start += size
    return out


@eqx.filter_jit
def _train(model, means, tau, data, key, hyper, steps, batch):
    tokens, last, answer, distractor = data
    lr, k_coef, temperature = hyper
    schedule = optax.linear_schedule(lr, 0.0, steps)
    opt = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=1e-3),
    )

    def loss(tau, rows):
        masks = jax.tree.map(lambda t: heaviside_ste(t, temperature), tau)
        delta = _margins(model, means, masks, tokens[rows], last[rows], answer[rows],
                         distractor[rows])  # fmt: skip
        kept = sum(m.sum() for m in jax.tree.leaves(masks))
        return _scores(delta)[0] + k_coef * kept

    def step(carry, key):
        tau, state = carry
        rows = jax.random.choice(key, tokens.shape[0], (batch,))
        value, grad = jax.value_and_grad(loss)(tau, rows)
        updates, state = opt.update(grad, state, tau)
        tau = jax.tree.map(lambda t: jnp.clip(t, -1.0, 1.0), optax.apply_updates(tau, updates))
        jax.debug.callback(tick, value)
        return (tau, state), value

    keys = jax.random.split(key, steps)
    (tau, _), losses = jax.lax.scan(step, (tau, opt.init(tau)), keys)
    return tau, losses


def smallest_k(loss_at, n: int, target: float) -> int:
    """The smallest `k` in `0..n` with `loss_at(k) <= target` by bisection (assuming the loss
    falls as `k` grows); `loss_at(n)` must meet the target."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if loss_at(mid) <= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def prune(
    model,
    task,
    means,
    *,
    target_loss: float = 0.15,
    steps: int = 2000,
    k_coef: float = 1e-4,
    lr: float = 3e-3,
    temperature: float = 1.0,
    init: tuple[float, float] = (0.1, 0.01),
    batch: int = 64,
    key=0,
    progress: bool = True,
) -> TaskCircuit:
    """The smallest node circuit of `model` on `task` whose task loss is at most
    `target_loss` (Gao et al. 2025): train `τ`, then bisect over the top-`k` nodes by `τ`.

    `init`: the mean and standard deviation of the normal initial `τ`. Raises a `ValueError`
    with the loss reached when even all nodes with `τ ≥ 0` miss the target.
    """
    check_float(target_loss, "target_loss", 0.0, low_open=True)
    check_int(steps, "steps", 1)
    check_int(batch, "batch", 1)
    check_float(temperature, "temperature", 0.0, low_open=True)
    check_float(lr, "lr", 0.0, low_open=True)
    check_float(k_coef, "k_coef", 0.0)
    data = _check_task(model, task)
    locs = _check_means(model, means)
    key = jax.random.key(key) if isinstance(key, int) else key
    init_key, key = jax.random.split(key)
    leaves = jax.random.split(init_key, len(locs))
    tau = {
        n: init[0] + init[1] * jax.random.normal(k, means[n].shape)
        for n, k in zip(locs, leaves, strict=True)
    }
    hyper = tuple(jnp.asarray(x, jnp.float32) for x in (lr, k_coef, temperature))
    with progress_bar(progress, total=steps, desc="prune", unit="step"):
        tau, losses = _train(model, means, tau, data, key, hyper, int(steps), int(batch))
    if not bool(jnp.isfinite(losses).all()):
        raise FloatingPointError("prune: the training loss became non-finite")
    flat = _flat(tau, locs)
    order = jnp.argsort(-flat)
    rank = jnp.zeros_like(order).at[order].set(jnp.arange(flat.size))
    n_pos = int((flat >= 0).sum())

    def masks_at(k):
        return _unflat(rank < k, tau, locs)

    def loss_at(k):
        return float(_evaluate(model, means, masks_at(k), *data, True)[0])

    reached = loss_at(n_pos)
    if not reached <= target_loss:
        raise ValueError(
            f"prune: the {n_pos} nodes with τ ≥ 0 reach a task loss of {reached:.4g}, above "
            f"target_loss={target_loss}; train longer, lower k_coef or raise the target"
        )
    k = smallest_k(loss_at, n_pos, target_loss)
    masks = masks_at(k)
    loss, acc, params = _evaluate(model, means, masks, *data, True)
    return TaskCircuit(
        masks, tau, float(loss), float(acc), float(params[0]), float(params[1]), int(k),
        circuit_edges(model, masks), losses, float(target_loss),
    )  # fmt: skip


def evaluate(model, task, circuit, means, *, ablate: str = "complement") -> dict[str, float]:
    """Task `loss` (after the circuit's scale and shift, if `circuit` is a `TaskCircuit`) and
    `accuracy` with `"complement"` (everything outside the circuit mean-ablated: sufficiency)
    or `"circuit"` (the circuit's nodes mean-ablated: necessity) ablation."""
    if ablate not in ("complement", "circuit"):
        raise ValueError(f"ablate must be 'complement' or 'circuit'; got {ablate!r}")
    masks = circuit.masks if isinstance(circuit, TaskCircuit) else circuit
    _check_names(model, masks, "masks")
    _check_means(model, means)
    data = _check_task(model, task)
    masks = {n: jnp.asarray(m, jnp.float32) for n, m in masks.items()}
    if ablate == "circuit":
        masks = {n: 1.0 - m for n, m in masks.items()}
    delta = _margins_jit(model, means, masks, *data)
    scale, shift = (circuit.scale, circuit.shift) if isinstance(circuit, TaskCircuit) else (1, 0)
    loss, acc = _scores(delta, scale, shift, _side(*data[2:]))
    return {"loss": float(loss), "accuracy": float(acc)}


_margins_jit = eqx.filter_jit(_margins)


def _pairs(model, masks):
    """`(src location, dst location, weight [src channels..., dst channels...] as
    [n_src, n_dst])` for every weight matrix between two locations `masks` has."""
    locs = locations(model)
    out = []
    for layer, block in enumerate(model.blocks):
        name = lambda loc, layer=layer: f"L{layer}.{loc}"
        attn = block.attn
        for loc, w in (("q", attn.W_Q), ("k", attn.W_K), ("v", attn.W_V)):
            # [heads, d_model, d_head] -> [d_model, heads * d_head]
            out.append((name("attn_in"), name(loc), jnp.moveaxis(w, 1, 0).reshape(w.shape[1], -1)))
        n_heads, n_kv = attn.W_O.shape[0], attn.W_V.shape[0]
        group = n_heads // max(n_kv, 1)
        # z channel (h, d) reads v channel (h // group, d): sum over the heads sharing it
        w_o = attn.W_O.reshape(n_kv, group, *attn.W_O.shape[1:])
        nz = (w_o != 0).any(1).reshape(-1, attn.W_O.shape[-1])
        out.append((name("v"), name("attn_out"), nz))
        if hasattr(block, "mlp"):
            out.append((name("mlp_in"), name("mlp_neuron"), block.mlp.W_in))
            out.append((name("mlp_neuron"), name("mlp_out"), block.mlp.W_out))
    return [(s, d, w) for s, d, w in out if s in locs and d in locs and s in masks and d in masks]


def circuit_edges(model, masks) -> int:
    """The number of nonzero weights between two kept nodes (Gao et al. 2025's circuit size)."""
    _check_names(model, masks, "masks")
    total = 0
    for src, dst, w in _pairs(model, masks):
        keep = np.ravel(masks[src]).astype(bool)[:, None] & np.ravel(masks[dst]).astype(bool)
        total += int((keep & (np.asarray(w) != 0)).sum())
    return total


def node_name(location: str, shape, index: int) -> str:
    """`"L0.attn_in[17]"`, `"L1.q[h3,5]"`: a readable name for flat channel `index`."""
    if len(shape) == 2:
        h, d = divmod(int(index), shape[1])
        return f"{location}[h{h},{d}]"
    return f"{location}[{int(index)}]"


def edges(model, masks) -> list[tuple[str, str, float]]:
    """`(src node, dst node, weight)` for every nonzero weight between two kept nodes. For
    `v → attn_out` the weight is the sum of W_O over the query heads sharing the v head."""
    _check_names(model, masks, "masks")
    out = []
    for src, dst, w in _pairs(model, masks):
        if w.dtype == bool:  # v -> attn_out: report the summed W_O
            block = model.blocks[int(src.split(".")[0][1:])]
            n_kv = block.attn.W_V.shape[0]
            w_o = block.attn.W_O.reshape(n_kv, -1, *block.attn.W_O.shape[1:])
            w = jnp.where(w, w_o.sum(1).reshape(w.shape), 0.0)
        w = np.asarray(w)
        ms, md = np.asarray(masks[src]), np.asarray(masks[dst])
        keep = ms.ravel().astype(bool)[:, None] & md.ravel().astype(bool) & (w != 0)
        for i, j in zip(*np.nonzero(keep), strict=True):
            out.append((node_name(src, ms.shape, i), node_name(dst, md.shape, j), float(w[i, j])))
    return out


def plot_circuit(model, circuit, path=None):
    """Draw the kept nodes in columns by layer and location (labelled) and the edges, width
    and colour (red positive, blue negative) by weight; save to `path` if given."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    masks = circuit.masks if isinstance(circuit, TaskCircuit) else circuit
    _check_names(model, masks, "masks")
    xy, columns = {}, [n for n in locations(model) if n in masks]
    for x, loc in enumerate(columns):
        m = np.asarray(masks[loc])
        for y, i in enumerate(np.flatnonzero(m.ravel())):
            xy[node_name(loc, m.shape, i)] = (x, -y)
    links = edges(model, masks)
    scale = max((abs(w) for *_, w in links), default=1.0)
    height = max(3.0, 0.25 * max((-y for _, y in xy.values()), default=0) + 2)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(columns)), height))
    for src, dst, w in links:
        (x0, y0), (x1, y1) = xy[src], xy[dst]
        ax.plot([x0, x1], [y0, y1], color="tab:red" if w > 0 else "tab:blue",
                lw=0.3 + 2.5 * abs(w) / scale, alpha=0.6)  # fmt: skip
    small = len(xy) <= 200
    for label, (x, y) in xy.items():
        ax.plot(x, y, "o", color="black", ms=3)
        if small:
            ax.annotate(label.split(".", 1)[1], (x, y), fontsize=5, xytext=(3, 0),
                        textcoords="offset points")  # fmt: skip
    ax.set_xticks(range(len(columns)), columns, rotation=45, fontsize=7)
    ax.set_yticks([])
    ax.set_title(f"{len(xy)} nodes, {len(links)} edges")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=150)
        plt.close(fig)
    return fig
