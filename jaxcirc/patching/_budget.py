"""Memory budget shared by the engines: prompts split into chunks whose live bytes fit it.

An engine estimates the bytes one prompt keeps live (its cached runs, and the smallest group
of units it evaluates at once); `prompts_per_chunk` says how many prompts run together. When
that is fewer than the batch and the metric is a mean over examples
(`jaxcirc.metrics.is_example_mean`), `mean_over_prompts` runs one compiled program per chunk
of rows — the last chunk padded by repeating a row and masked out, so every chunk runs the same
program — and the mean is the chunks' masked sums over the batch size (`example_sum`).
A metric that does not declare a per-example form keeps the whole batch, as its meaning
requires, with a warning (once per metric) when that exceeds the budget.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from ..metrics import is_example_mean
from ._stable import Keyed, user_stacklevel

MEMORY_BUDGET = 1 << 30  # default bytes of activations an engine keeps live
_warned: set[str] = set()


def budget(memory_budget: int | None) -> int:
    """`memory_budget` checked (a positive number of bytes), or the default 1 GiB."""
    if memory_budget is None:
        return MEMORY_BUDGET
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, np.integer)):
        raise TypeError(f"memory_budget is a number of bytes (an int); got {memory_budget!r}")
    if memory_budget < 1:
        raise ValueError(f"memory_budget must be a positive number of bytes; got {memory_budget}")
    return int(memory_budget)


def _name(metric) -> str:
    if isinstance(metric, Keyed):
        metric = metric.fn
    fn = getattr(metric, "fn", metric)  # a `metrics.Bound` names its function
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{name} ({type(metric).__qualname__})" if fn is not metric else name


def prompts_per_chunk(
    batch: int,
    per_prompt: int,
    limit: int,
    metric: Callable | None = None,
    *,
    on_positions: bool = False,
    what: str = "this engine",
) -> int:
    """How many of `batch` prompts run at once: as many as fit `limit` bytes at `per_prompt`
    bytes each (at least one), or the whole batch when they all fit or when `metric` (if
    given) is not a mean over examples (then a warning, once per metric, says why)."""
    fit = max(1, int(limit) // max(1, int(per_prompt)))
    if fit >= batch:
        return batch
    if metric is not None and not is_example_mean(metric, on_positions=on_positions):
        name = _name(metric)
        if name not in _warned:
            _warned.add(name)
            method = "per_example_on_positions" if on_positions else "per_example"
            warnings.warn(
                f"{what}: the metric {name} keeps all {batch} prompts at once (about "
                f"{batch * per_prompt / 2**30:.1f} GiB, over memory_budget = "
                f"{limit / 2**30:.2f} GiB): it does not declare a per-example form, so its "
                f"batch cannot be split without changing its meaning. If it is a mean over "
                f"examples, give it `{method}(logits, rows) -> [n]` (see jaxcirc.metrics), "
                f"or build it with jaxcirc.metrics.bind; else pass fewer prompts",
                stacklevel=user_stacklevel(),
            )
        return batch
    return fit


def row_chunks(batch: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """`(rows, valid)`, each `[n_chunks, size]`: the example indices of each chunk (the last
    padded by repeating the last example) and which of them count."""
    n_chunks = -(-batch // size)
    index = np.arange(n_chunks * size)
    return np.minimum(index, batch - 1).reshape(n_chunks, size).astype(np.int32), (
        index < batch
    ).reshape(n_chunks, size)


def take(tree, rows: Int[Array, " n"]):
    """Every array of `tree` at `rows` along its first axis (`None` leaves stay `None`)."""
    return jax.tree_util.tree_map(lambda x: jnp.take(jnp.asarray(x), rows, axis=0), tree)


def mean_over_prompts(
    run: Callable[[Int[Array, " n"], Bool[Array, " n"]], object], batch: int, size: int
):
    """`Σ_chunks run(rows, valid) / batch`: `run` returns (a pytree of) sums over the valid
    rows of a chunk of `size` examples; the result is their mean over the batch."""
    total = None
    for rows, valid in zip(*row_chunks(batch, size)):
        out = run(jnp.asarray(rows), jnp.asarray(valid))
        total = out if total is None else jax.tree_util.tree_map(jnp.add, total, out)
    return jax.tree_util.tree_map(lambda x: x / batch, total)


def example_sum(
    metric: Callable,
    logits: Float[Array, "n ..."],
    rows: Int[Array, " n"],
    valid: Bool[Array, " n"],
    *,
    on_positions: bool = False,
) -> Float[Array, ""]:
    """The sum of `metric`'s per-example values over the valid rows of a chunk."""
    each = metric.per_example_on_positions if on_positions else metric.per_example
    return jnp.where(valid, each(logits, rows), 0.0).sum()


def example_reader(metric: Callable, rows, valid, *, on_positions: bool = False) -> Callable:
    """`logits -> example_sum(metric, logits, rows, valid)`: what a chunked engine reads in
    place of `metric(logits)` (or `metric.on_positions`)."""
    return lambda logits: example_sum(metric, logits, rows, valid, on_positions=on_positions)
