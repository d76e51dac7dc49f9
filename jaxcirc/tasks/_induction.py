"""Induction (Olsson et al. 2022, "In-context Learning and Induction Heads") as a `Task`.

`induction_task` draws the prompts (also `jaxcirc.zoo.induction_task`, the task the zoo's
induction models were evaluated on): clean `[A, A]`, corrupt `[A', A]` with `A'` disjoint from
`A`, and `InductionMetric` reads them. `induction` wraps them as a `Task` that drops the final
token so the last position asks for it: its answer is the last token of the repeat.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._task import Task, _evaluate, as_seed

MIN_LEN = 2


class InductionMetric(eqx.Module):
    """Mean log-probability of the induction token over the second half of each prompt.

    Called on logits `[batch, seq, d_vocab]`; a pytree of arrays, so a sweep traces it.
    """

    targets: Int[Array, "batch seq"]
    weights: Float[Array, " seq"]

    def __call__(self, logits: Float[Array, "batch seq d_vocab"]) -> Float[Array, ""]:
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        correct = jnp.take_along_axis(logp, self.targets[..., None], axis=-1)[..., 0]
        return (correct * self.weights).sum(-1).mean() / self.weights.sum()

    def per_example(self, logits, rows=None) -> Float[Array, " n"]:
        """Each example's term of the mean (`rows`: which examples the logits are)."""
        targets = self.targets if rows is None else jnp.take(self.targets, rows, axis=0)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        correct = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        return (correct * self.weights).sum(-1) / self.weights.sum()


class InductionTask(eqx.Module):
    """Clean prompts `[A, A]`, corrupt prompts `[A', A]` and the metric that reads them.

    `A` is `half_len` distinct random tokens; `A'` resamples the first half with tokens that
    are not in `A`. This breaks the repeat while keeping the queries: the second half is the
    same in both, only the earlier copy it could be predicted from differs.
    """

    clean: Int[Array, "batch seq"]
    corrupt: Int[Array, "batch seq"]
    metric: InductionMetric
    half_len: int = eqx.field(static=True)

    @property
    def labels(self) -> tuple[str, ...]:
        """Position labels: `A0 … A{L-1}` for both halves (the same token in each)."""
        return tuple(f"A{i % self.half_len}" for i in range(2 * self.half_len))

    def evaluate(self, model) -> tuple[Float[Array, ""], Float[Array, ""]]:
        """`(metric on the clean run, metric on the corrupt run)`, as `Task.evaluate`."""
        return _evaluate(model, self.clean, self.metric), _evaluate(
            model, self.corrupt, self.metric
        )


def induction_task(
    n: int = 8, half_len: int = 16, seed: int = 0, *, d_vocab: int = 64
) -> InductionTask:
    """`n` repeated random-token prompts of length `2 * half_len` over `d_vocab` tokens.

    See `InductionTask` for the clean/corrupt pairs; the metric is `InductionMetric` over
    positions `half_len .. 2 * half_len - 2` (the predictions an induction head can make).
    """
    for name, value in (("n", n), ("half_len", half_len), ("d_vocab", d_vocab)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"induction_task: {name} must be a positive int; got {value!r}")
    if half_len < MIN_LEN or 2 * half_len > d_vocab:
        raise ValueError(
            f"induction_task: half_len={half_len} must lie in [{MIN_LEN}, d_vocab // 2 = "
            f"{d_vocab // 2}] (the clean and corrupt halves use distinct tokens)"
        )
    perms = jax.vmap(lambda k: jax.random.permutation(k, d_vocab))(
        jax.random.split(jax.random.key(seed), n)
    ).astype(jnp.int32)
    first, fresh = perms[:, :half_len], perms[:, half_len : 2 * half_len]
    clean = jnp.concatenate([first, first], axis=1)
    corrupt = jnp.concatenate([fresh, first], axis=1)
    targets = jnp.concatenate([clean[:, 1:], jnp.zeros((n, 1), jnp.int32)], axis=1)
    pos = jnp.arange(2 * half_len)
    weights = ((pos >= half_len) & (pos < 2 * half_len - 1)).astype(jnp.float32)
    return InductionTask(clean, corrupt, InductionMetric(targets, weights), int(half_len))


def induction(
    n: int, *, half_len: int = 16, d_vocab: int = 64, seed=0, bos: int | None = None
) -> Task:
    """`n` repeated random-token prompts `[bos?] A A[:-1]` of `half_len` distinct tokens each.

    **Arguments:** `n` prompts; `half_len` tokens in `A`; tokens drawn from `0..d_vocab-1`
    (never `bos`); `seed` an int or a `jax.random` key; `bos`: a token id to put first, or `None`.

    **Returns:** a `Task` (length `2 * half_len - 1`, plus one with `bos`): `corrupt` is
    `[A', A[:-1]]`; `answer` = `A[-1]`, the next token of the repeat; `distractor` = `A'[-1]`,
    a token outside `A`. The metric is `InductionMetric`: the mean log-probability of
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
