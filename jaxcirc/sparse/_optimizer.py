"""Gao et al. 2025's optimizer (arXiv 2511.13653, training details): gradients scaled to RMS 1,
AdamW with beta = (0.9, 0.95), eps = 0.1 and weight decay 0.1 on arrays of >= 2 axes, linear
warm-up then linear decay to 0, then the weight-sparsity projection (`keep_topk`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from .._checks import check_float, check_int
from ._masked import keep_topk, l0_schedule


class NormalizeRMSState(NamedTuple):
    pass


def normalize_rms(eps: float = 1e-12) -> optax.GradientTransformation:
    """Scale all gradients together so that their root mean square over every entry is 1."""

    def init(params):
        return NormalizeRMSState()

    def update(updates, state, params=None):
        leaves = jax.tree_util.tree_leaves(updates)
        total = sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves)
        size = sum(x.size for x in leaves)
        scale = jax.lax.rsqrt(total / max(size, 1) + eps)
        return jax.tree_util.tree_map(lambda x: (x * scale).astype(x.dtype), updates), state

    return optax.GradientTransformation(init, update)


def warmup_linear_decay(peak: float, total_steps: int, warmup: float = 0.01) -> Callable:
    """Learning rate: 0 -> `peak` over the first `warmup` fraction of steps, then -> 0 at
    `total_steps` (linear both ways)."""
    peak = check_float(peak, "learning_rate", 0.0, low_open=True)
    total_steps = check_int(total_steps, "total_steps", 1)
    warmup = check_float(warmup, "warmup (a fraction of training)", 0.0, 1.0, high_open=True)
    w = max(int(round(warmup * total_steps)), 1)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, w), optax.linear_schedule(peak, 0.0, total_steps - w)],
        [w],
    )


def _matrices(params):
    return jax.tree_util.tree_map(lambda x: getattr(x, "ndim", 0) >= 2, params)


def sparse_adamw(
    total_steps: int,
    *,
    target: float = 1.0,
    learning_rate: float = 1.28e-2,
    warmup: float = 0.01,
    anneal: tuple[float, float] = (0.01, 0.5),
    schedule_kind: str = "linear",
    floor: int = 4,
    b1: float = 0.9,
    b2: float = 0.95,
    eps: float = 0.1,
    weight_decay: float = 0.1,
    include: Callable | None = None,
) -> optax.GradientTransformation:
    """The paper's optimizer as one optax chain: `normalize_rms()`, AdamW (`b1`, `b2`, `eps`,
    decoupled `weight_decay` on arrays of >= 2 axes) at `warmup_linear_decay(learning_rate,
    total_steps, warmup)`, then `keep_topk(l0_schedule(target, total_steps, start=anneal[0],
    end=anneal[1], kind=schedule_kind), floor=floor)`; `target=1` trains dense (no projection).
    Defaults are Gao et al.'s (learning rate 1.28e-2, 1 % warm-up, anneal over 1 %..50 %).
    """
    target = check_float(target, "target fraction", 0.0, 1.0, low_open=True)
    lr = warmup_linear_decay(learning_rate, total_steps, warmup)
    parts = [
        normalize_rms(),
        optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=_matrices),
    ]
    if target < 1.0:
        start, end = anneal
        frac = l0_schedule(target, total_steps, start=start, end=end, kind=schedule_kind)
        parts.append(keep_topk(frac, floor=floor, include=include))
    return optax.chain(*parts)
