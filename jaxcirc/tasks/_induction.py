"""Induction (Olsson et al. 2022, "In-context Learning and Induction Heads") as a `Task`.

A wrapper over `jaxcirc.zoo.induction_task`, which draws the prompts: clean `[A, A]`,
corrupt `[A', A]` with `A'` disjoint from `A`. The `Task` drops the final token so the last
position asks for it: its answer is the last token of the repeat.
"""

from __future__ import annotations

import jax.numpy as jnp

from ..zoo._induction import InductionMetric, induction_task
from ._task import Task, as_seed


def induction(
    n: int, *, half_len: int = 16, d_vocab: int = 64, seed=0, bos: int | None = None
) -> Task:
    """`n` repeated random-token prompts `[bos?] A A[:-1]` of `half_len` distinct tokens each.

    **Arguments:** `n` prompts; `half_len` tokens in `A`; tokens drawn from `0..d_vocab-1`
    (never `bos`); `seed` an int or a `jax.random` key; `bos`: a token id to put first, or `None`.

    **Returns:** a `Task` (length `2 * half_len - 1`, plus one with `bos`): `corrupt` is
    `[A', A[:-1]]`; `answer` = `A[-1]`, the next token of the repeat; `distractor` = `A'[-1]`,
    a token outside `A`. The metric is the zoo's `InductionMetric`: the mean log-probability of
    the induction token over the repeated half (all its predictions, not just the last).
    `positions["first"]`/`["second"]`: where each copy of `A` starts.
    """
    if bos is not None and not 0 <= bos < d_vocab:
        raise ValueError(f"induction: bos={bos} must be a token id in [0, d_vocab={d_vocab})")
    vocab = d_vocab if bos is None else d_vocab - 1
    base = induction_task(n, half_len, as_seed(seed), d_vocab=vocab)
    clean, corrupt = base.clean, base.corrupt
    targets, weights = base.metric.targets, base.metric.weights
    if bos is not None:  # draw from d_vocab - 1 ids, skip over bos, put it first
        shift = lambda t: jnp.where(t >= bos, t + 1, t)
        clean, corrupt, targets = shift(clean), shift(corrupt), shift(targets)
        col = jnp.full((n, 1), bos, jnp.int32)
        clean = jnp.concatenate([col, clean], axis=1)
        corrupt = jnp.concatenate([col, corrupt], axis=1)
        targets = jnp.concatenate([clean[:, 1:2], targets], axis=1)
        weights = jnp.concatenate([jnp.zeros(1, weights.dtype), weights])
    off = int(bos is not None)
    answer, distractor = clean[:, -1], corrupt[:, off + half_len - 1]
    return Task(
        clean=clean[:, :-1],
        corrupt=corrupt[:, :-1],
        answer=answer,
        distractor=distractor,
        metric=InductionMetric(targets[:, :-1], weights[:-1]),
        positions=dict(
            first=jnp.full((n,), off, jnp.int32), second=jnp.full((n,), off + half_len, jnp.int32)
        ),
        prompts=(),
        corrupt_prompts=(),
        labels=(("BOS",) if bos is not None else ())
        + tuple(f"A{i % half_len}" for i in range(2 * half_len - 1)),
        name="induction",
    )
