"""Weight-sparse training: after every update keep the largest-magnitude entries of each matrix.

Gao et al. 2025, "Weight-sparse transformers have interpretable circuits" (arXiv 2511.13653):
every included matrix keeps the same fraction of nonzeros, each row and column (a neuron or
channel) keeps at least `floor` of them, and the fraction is annealed from dense to the target.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._checks import Message, check_float, check_int, runtime_check

SCHEDULE_KINDS = ("linear", "exponential")


def l0_schedule(
    target: float,
    total_steps: int,
    *,
    start: float = 0.01,
    end: float = 0.5,
    kind: str = "linear",
) -> Callable:
    """The nonzero fraction at each step: 1 (dense) until `start · total_steps`, then annealed
    to `target` by `end · total_steps`, then `target` (`start`, `end` are fractions of training).

    `kind="linear"`: `1 + (target - 1) · p`; `"exponential"`: `target ** p`, with `p` the
    progress in [0, 1] (Gao et al. 2025 anneal over 1 %..50 % of training; the exponential form
    is their bridges configuration). Returns an optax schedule `step -> float32 fraction`.
    """
    target = check_float(target, "target fraction", 0.0, 1.0, low_open=True)
    total_steps = check_int(total_steps, "total_steps", 1)
    start = check_float(start, "start (a fraction of training)", 0.0, 1.0)
    end = check_float(end, "end (a fraction of training)", 0.0, 1.0)
    if end <= start:
        raise ValueError(
            f"the L0 schedule ends (end = {end:g}) before or when it starts (start = {start:g}); "
            f"end must be in ({start:g}, 1]"
        )
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"kind must be one of {SCHEDULE_KINDS}; got {kind!r}")
    first, span = start * total_steps, (end - start) * total_steps

    def schedule(step):
        p = jnp.clip((jnp.asarray(step, jnp.float32) - first) / span, 0.0, 1.0)
        if kind == "linear":
            value = 1.0 + (target - 1.0) * p
        else:
            value = jnp.power(jnp.float32(target), p)
        # the end points exactly: dense before, the target itself after
        return jnp.where(p >= 1, jnp.float32(target), jnp.where(p <= 0, 1.0, value)).astype(
            jnp.float32
        )

    return schedule


def nonzero_count(fraction, size: int):
    """Entries a matrix of `size` keeps at `fraction`: `ceil(fraction · size)` in float32,
    within `1..size` (before the floor, which may keep more)."""
    k = jnp.ceil(jnp.asarray(fraction, jnp.float32) * jnp.float32(size))
    return jnp.clip(k, 1, size).astype(jnp.int32)


# --------------------------------------------------------------------------- which arrays


def leaf_name(path) -> str:
    """The last key of a pytree path as text (`W_Q` for `.blocks[0].attn.W_Q`)."""
    key = path[-1] if path else None
    for attr in ("name", "key", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def default_include(path, leaf) -> bool:
    """Every floating array of two or more axes except biases (names starting with `b`)."""
    return (
        hasattr(leaf, "ndim")
        and leaf.ndim >= 2
        and jnp.issubdtype(leaf.dtype, jnp.floating)
        and not leaf_name(path).startswith("b")
    )


def default_row_axis(path, leaf) -> int:
    """The axis whose slices are the rows: the residual-stream axis of jaxcirc's per-head
    arrays (`W_Q/W_K/W_V [head, d_model, d_head]`: axis 1; `W_O [head, d_head, d_model]`: 2),
    else axis 0. The columns are the remaining axes together (one per q/k/v channel)."""
    name = leaf_name(path)
    if leaf.ndim >= 3:
        return leaf.ndim - 2 if name in ("W_Q", "W_K", "W_V") else leaf.ndim - 1
    return 0


def as_matrix(x, axis: int):
    """`x` as `[rows, columns]`: `axis` first, the other axes flattened."""
    return jnp.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)


def from_matrix(m, shape: tuple[int, ...], axis: int):
    moved = (shape[axis], *(s for i, s in enumerate(shape) if i != axis))
    return jnp.moveaxis(m.reshape(moved), 0, axis)


# --------------------------------------------------------------------------- the mask


def topk_mask(w, k, floor: int):
    """Boolean mask of `w [rows, columns]`: each row's and each column's `floor` largest
    |entries| (ties: lower index), then the largest of the rest until `k` entries are kept in
    all (ties: lower flat index). Keeps `max(k, protected)` entries: when the floor alone needs
    more than `k`, the floor wins."""
    rows, cols = w.shape
    a = jnp.abs(w)
    protected = jnp.zeros(w.shape, bool)
    if floor:
        _, ri = jax.lax.top_k(a, floor)
        protected = protected.at[jnp.arange(rows)[:, None], ri].set(True)
        _, ci = jax.lax.top_k(a.T, floor)
        protected = protected.at[ci, jnp.arange(cols)[:, None]].set(True)
    score = jnp.where(protected, jnp.inf, a).ravel()
    keep = jnp.maximum(k, protected.sum(dtype=jnp.int32))
    threshold = kth_largest(score, keep)
    above = score > threshold
    tied = score == threshold
    need = keep - above.sum(dtype=jnp.int32)
    mask = jax.lax.cond(  # ties at the threshold: the lower flat indices (rare but exact)
        tied.sum(dtype=jnp.int32) == need,
        lambda: above | tied,
        lambda: above | (tied & (jnp.cumsum(tied, dtype=jnp.int32) <= need)),
    )
    return mask.reshape(rows, cols)


def kth_largest(score, k):
    """The `k`-th largest of the non-negative float32 `score` (`k` an array, `1..size`): a
    bisection over the bits (non-negative floats order as their int32 bit patterns), 31 passes
    of compare-and-count instead of a sort (XLA's CPU sort dominated the step)."""
    bits = jax.lax.bitcast_convert_type(score.astype(jnp.float32), jnp.int32)

    def body(i, t):
        candidate = t | jnp.left_shift(jnp.int32(1), 30 - i)
        return jnp.where((bits >= candidate).sum(dtype=jnp.int32) >= k, candidate, t)

    t = jax.lax.fori_loop(0, 31, body, jnp.int32(0))
    return jax.lax.bitcast_convert_type(t, jnp.float32)


class KeepTopKState(NamedTuple):
    """`count`: updates applied so far; `masks`: one bool mask per included array (its own
    shape), the entries kept after the last update (all True before the first)."""

    count: jax.Array
    masks: tuple


def _message(index, fraction) -> str:
    value = float(fraction)
    nearest = min(max(value, 1e-9), 1.0) if math.isfinite(value) else 1.0
    return (
        f"the nonzero fraction {value!r} from the schedule is outside (0, 1] "
        f"(nearest valid: {nearest:g})"
    )


def keep_topk(
    fraction: float | Callable = 1.0,
    *,
    floor: int = 4,
    include: Callable | None = None,
    row_axis: Callable | None = None,
) -> optax.GradientTransformation:
    """Chain after an optimizer: the new parameters `params + updates` keep, in every included
    array, only `nonzero_count(fraction, size)` largest-magnitude entries, with at least
    `floor` in every row and column (Gao et al. 2025's protection rule: each row's and
    column's top-`floor` first, then the global top among the rest); the rest become 0.

    - `fraction`: a float in (0, 1] or a schedule `step -> fraction` (`l0_schedule`), read at
      the optimizer's own step count (an array: one compiled step for every fraction).
    - `include(path, leaf) -> bool`: which arrays (default `default_include`: every floating
      array of >= 2 axes but biases, embeddings and unembedding included as in the paper; pass
      e.g. `lambda p, x: default_include(p, x) and "embed" not in jax.tree_util.keystr(p)` to
      keep them dense).
    - `row_axis(path, leaf) -> int`: which axis holds the rows (`default_row_axis`); columns
      are the other axes together. Rows and columns are the neurons and channels the floor
      protects.

    The update is rewritten to `where(mask, update, -param)`, so a kept entry moves exactly as
    the inner optimizer says (with fraction 1 this is the inner optimizer, bit for bit) and a
    dropped one lands on exactly 0. The masks live in the state (one byte per included weight);
    nothing else is stored.
    """
    if callable(fraction):
        schedule = fraction
    else:
        value = check_float(fraction, "target fraction", 0.0, 1.0, low_open=True)

        def schedule(step):
            return jnp.float32(value)

    floor = check_int(floor, "floor", 0)
    include = include or default_include
    row_axis = row_axis or default_row_axis

    def init(params):
        leaves = jax.tree_util.tree_leaves_with_path(params)
        masks = []
        for path, leaf in leaves:
            if not include(path, leaf):
                continue
            axis = row_axis(path, leaf)
            rows, cols = leaf.shape[axis], math.prod(leaf.shape) // leaf.shape[axis]
            if floor > min(rows, cols):
                short, size = ("row", cols) if cols < rows else ("column", rows)
                raise ValueError(
                    f"floor = {floor} nonzeros is larger than a {short} of "
                    f"{jax.tree_util.keystr(path)} {list(leaf.shape)} ({size} entries; rows "
                    f"along axis {axis}); floor must be in 0..{min(rows, cols)}"
                )
            masks.append(jnp.ones(leaf.shape, bool))
        return KeepTopKState(count=jnp.zeros((), jnp.int32), masks=tuple(masks))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("keep_topk needs the parameters: call update(updates, state, params)")
        frac = jnp.asarray(schedule(state.count), jnp.float32)
        runtime_check((frac <= 0) | (frac > 1) | ~jnp.isfinite(frac), Message(_message), frac)
        u_leaves, treedef = jax.tree_util.tree_flatten(updates)
        p_leaves = jax.tree_util.tree_leaves_with_path(params)
        if len(p_leaves) != len(u_leaves):
            raise ValueError(
                f"updates have {len(u_leaves)} arrays but params {len(p_leaves)}; pass the "
                "same (filtered) pytree to both"
            )
        out, masks = [], []
        for u, (path, p) in zip(u_leaves, p_leaves):
            if not include(path, p):
                out.append(u)
                continue
            axis = row_axis(path, p)
            new = as_matrix(p + u, axis)
            mask = topk_mask(new, nonzero_count(frac, new.size), floor)
            mask = from_matrix(mask, p.shape, axis)
            masks.append(mask)
            out.append(jnp.where(mask, u, -p).astype(u.dtype))
        if len(masks) != len(state.masks):
            raise ValueError(
                f"keep_topk was initialised on {len(state.masks)} included arrays but these "
                f"params have {len(masks)}; initialise it on the same pytree"
            )
        return jax.tree_util.tree_unflatten(treedef, out), KeepTopKState(
            state.count + 1, tuple(masks)
        )

    return optax.GradientTransformation(init, update)


def masks(state) -> tuple:
    """The masks of the (first) `KeepTopKState` inside an optimizer state."""
    for s in jax.tree_util.tree_leaves(state, is_leaf=lambda x: isinstance(x, KeepTopKState)):
        if isinstance(s, KeepTopKState):
            return s.masks
    raise ValueError("no keep_topk state in this optimizer state")


def nonzeros(params, include: Callable | None = None) -> dict[str, int]:
    """`{path: nonzero entries}` of the included arrays (on the host)."""
    include = include or default_include
    return {
        jax.tree_util.keystr(path): int(np.count_nonzero(np.asarray(leaf)))
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if include(path, leaf)
    }
