"""Metrics on batched logits `[batch, seq, d_vocab]`, read at one position per example.

Each function is pure `jax.numpy`, so it can be jitted, differentiated and used inside a
patching sweep. `position` is an int (default `-1`, the last token) or an int array `[batch]`
of per-example positions. Token ids are `[batch]`, a scalar shared by the batch, or a set per
example `[batch, k]` where negative ids are padding (sets of different sizes in one array).

`logit_diff` is the IOI metric (Wang et al. 2023, "Interpretability in the Wild"); `prob_diff`
the greater-than metric (Hanna et al. 2023, "How does GPT-2 compute greater-than?");
`kl_to_clean` and `normalized` follow Heimersheim & Nanda 2024, "How to use and interpret
activation patching". `bind` turns any of them into a metric `logits -> scalar` for
`jaxcirc.patching.sweep`.

**Read positions.** A metric may declare the positions it reads, so an engine can unembed only
those: `metric.positions(batch, seq)` gives `[batch, n]` non-negative positions (or `None`:
every position), and `metric.on_positions(logits_read)` takes `logits_read = take_along_axis(
logits, positions[:, :, None], 1)`, `[batch, n, d_vocab]`, and returns exactly
`metric(logits)`. `read_positions(metric, batch, seq)` asks any metric (`None` when it does
not say). `bind` of `logit_diff`, `prob_diff`, `cross_entropy` or `kl_to_clean` declares its
`position` (default `-1`, i.e. `seq - 1`; per-example positions such as a padded batch's
`lengths - 1`); `normalize` forwards to the metric it wraps.

**Per example.** A metric that is a mean over examples may say so, so an engine can split a
large batch of prompts into chunks and average them: `metric.per_example(logits, rows)` gives
`[n]` values whose mean is `metric(logits)`, where `rows` (`[n]` int, default all) are the
examples of the metric's batch that `logits [n, seq, d_vocab]` belong to (so per-example
arguments such as answers are read at `rows`); a metric that declares positions also gives
`metric.per_example_on_positions(logits_read, rows)`. `is_example_mean(metric)` asks any
metric. `bind` of the one-position metrics, `normalize` of such a metric and the task metrics
declare it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from .._checks import Message, check_index, is_traced, runtime_check
from .._finite import check_finite, describe_index, first_nonfinite

Position = int | Int[ArrayLike, " batch"]


def at_position(
    logits: Float[Array, "batch seq d_vocab"], position: Position = -1
) -> Float[Array, "batch d_vocab"]:
    """The logits at `position`: one int for every example, or an int array `[batch]`."""
    logits = jnp.asarray(logits)
    if logits.ndim != 3:
        raise ValueError(
            f"metrics take logits of shape [batch, seq, d_vocab]; got shape {list(logits.shape)}"
            + (" (a single example? add a batch axis: logits[None])" if logits.ndim == 2 else "")
        )
    batch, seq, _ = logits.shape
    position = _position(position, batch, seq)
    if position.ndim == 0:
        return jax.lax.dynamic_index_in_dim(logits, position % seq, axis=1, keepdims=False)
    position = jnp.where(position < 0, position + seq, position)
    return jnp.take_along_axis(logits, position[:, None, None], axis=1)[:, 0]


def _position(position, batch: int, seq: int) -> Int[Array, "*batch"]:
    """`position` (an int or `[batch]` ints) checked against `seq` positions: concrete values
    now, traced ones when the program runs (never clamped)."""
    traced = is_traced(position)
    position = position if traced else np.asarray(position)
    if position.dtype == bool or not jnp.issubdtype(position.dtype, jnp.integer):
        raise ValueError(f"position must be an int or int array; got dtype {position.dtype}")
    if position.ndim not in (0, 1) or (position.ndim == 1 and position.shape != (batch,)):
        raise ValueError(
            f"position must be an int or an int array of shape [batch] = [{batch}]; "
            f"got shape {list(position.shape)}"
        )
    check_index(position, seq, "position", context=f" for logits of {seq} positions")
    return position if traced else jnp.asarray(position, jnp.int32)


def _ids(
    ids, batch: int, name: str, d_vocab: int, allow_empty: bool = False
) -> tuple[Int[Array, "batch k"], Array]:
    """Token ids as `[batch, k]` with the mask of real (non-negative) ids, checked against
    `d_vocab`: concrete ids now, traced ones when the program runs. A negative id is padding
    of a set `[batch, k]` only, and every set needs one real id."""
    traced = is_traced(ids)
    ids = ids if traced else np.asarray(ids)
    if ids.dtype == bool or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"{name} must be integer token ids; got dtype {ids.dtype}")
    sets = ids.ndim == 2
    if ids.ndim not in (0, 1, 2) or (ids.ndim and ids.shape[0] != batch):
        raise ValueError(
            f"{name} must have shape [batch], [batch, k] or [] with batch = {batch}; "
            f"got shape {list(ids.shape)}"
        )
    low = -(2**31) if sets else 0
    _check_ids(ids, name, low, d_vocab, traced, allow_empty)
    ids = jnp.asarray(ids, jnp.int32) if not traced else ids
    if ids.ndim == 0:
        ids = jnp.broadcast_to(ids, (batch,))
    if ids.ndim == 1:
        ids = ids[:, None]
    return ids, ids >= 0


def _bad_id(name: str, value: int, index, d_vocab: int, ndim: int) -> str:
    nearest = min(max(value, 0), d_vocab - 1)
    padding = "; negative ids pad a set [batch, k] only" if value < 0 and ndim < 2 else ""
    at = f" at {describe_index(index, ('example', 'entry')[:ndim])}" if index else ""
    return (
        f"{name} id {value}{at} is outside [0, d_vocab={d_vocab}) "
        f"(nearest valid id: {nearest}{padding})"
    )


def _check_ids(ids, name: str, low: int, d_vocab: int, traced: bool, allow_empty: bool) -> None:
    sets = low < 0
    need_one = sets and not allow_empty  # an empty set: NaN for a mean, fine for a sum
    bad = (ids < low) | (ids >= d_vocab)
    empty = (ids < 0).all(-1) if sets else None
    if not traced:
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0]) if ids.ndim else ()
            raise ValueError(_bad_id(name, int(ids[index]), index, d_vocab, ids.ndim))
        if need_one and empty.any():
            row = int(np.flatnonzero(empty)[0])
            raise ValueError(
                f"{name} set of example {row} has no id (all {ids.shape[1]} entries negative, "
                f"i.e. padding); give each example at least one id in [0, {d_vocab})"
            )
        return
    runtime_check(bad, Message(_runtime_bad_id, (name, d_vocab, ids.ndim)), ids)
    if need_one:
        runtime_check(empty, Message(_runtime_empty_set, (name,)))


def _runtime_bad_id(index, value, name: str, d_vocab: int, ndim: int) -> str:
    return _bad_id(name, int(value), index, d_vocab, ndim)


def _runtime_empty_set(index, name: str) -> str:
    return f"{name} set of example {index[-1]} has no id (every entry is padding)"


def _gather(values: Float[Array, "batch d_vocab"], ids, name: str, allow_empty: bool = False):
    ids, mask = _ids(ids, values.shape[0], name, values.shape[-1], allow_empty)
    return jnp.take_along_axis(values, jnp.where(mask, ids, 0), axis=1), mask


def _checked(value: Array, logits, name: str, position) -> Array:
    """`value`, or a `NonFiniteError` naming the first non-finite logit it read (eager
    calls only: a traced metric is checked by the method that runs it)."""
    if is_traced(value):
        return value

    def diagnose():
        read = at_position(logits, position)
        index = first_nonfinite(read)
        if index is None:
            return None
        return f"the logits at {describe_index(index, ('example', 'vocab'))} are {read[index]}"

    return check_finite(value, name, diagnose=diagnose)


def logit_diff(
    logits: Float[Array, "batch seq d_vocab"],
    answer: Int[ArrayLike, "batch ..."],
    distractor: Int[ArrayLike, "batch ..."],
    *,
    position: Position = -1,
) -> Float[Array, ""]:
    """Mean over the batch of `logit[answer] - logit[distractor]` at `position`.

    With sets `[batch, k]`, each side is the mean logit over its (non-negative) ids.
    The IOI metric of Wang et al. 2023.
    """
    x = at_position(logits, position).astype(jnp.float32)
    a, a_mask = _gather(x, answer, "answer")
    d, d_mask = _gather(x, distractor, "distractor")
    side = lambda v, m: (v * m).sum(-1) / m.sum(-1)
    value = (side(a, a_mask) - side(d, d_mask)).mean()
    return _checked(value, logits, "logit_diff", position)


def prob_diff(
    logits: Float[Array, "batch seq d_vocab"],
    answer: Int[ArrayLike, "batch ..."],
    distractor: Int[ArrayLike, "batch ..."],
    *,
    position: Position = -1,
) -> Float[Array, ""]:
    """Mean over the batch of `p(answer) - p(distractor)` at `position`.

    With sets `[batch, k]`, each side is the total probability of its (non-negative) ids:
    Hanna et al. 2023's greater-than metric `sum p(y > YY) - sum p(y <= YY)`.
    """
    p = jax.nn.softmax(at_position(logits, position).astype(jnp.float32), axis=-1)
    a, a_mask = _gather(p, answer, "answer", allow_empty=True)
    d, d_mask = _gather(p, distractor, "distractor", allow_empty=True)
    value = ((a * a_mask).sum(-1) - (d * d_mask).sum(-1)).mean()
    return _checked(value, logits, "prob_diff", position)


def cross_entropy(
    logits: Float[Array, "batch seq d_vocab"],
    answer: Int[ArrayLike, "batch ..."],
    *,
    position: Position = -1,
) -> Float[Array, ""]:
    """Mean over the batch of `-log p(answer)` at `position` (of the set's total probability)."""
    logp = jax.nn.log_softmax(at_position(logits, position).astype(jnp.float32), axis=-1)
    a, mask = _gather(logp, answer, "answer")
    value = -jax.nn.logsumexp(jnp.where(mask, a, -jnp.inf), axis=-1).mean()
    return _checked(value, logits, "cross_entropy", position)


def kl_to_clean(
    logits: Float[Array, "batch seq d_vocab"],
    clean_logits: Float[Array, "batch seq d_vocab"] | Float[Array, "batch d_vocab"],
    *,
    position: Position = -1,
) -> Float[Array, ""]:
    """Mean over the batch of `KL(p_clean || p)` between next-token distributions at `position`.

    `clean_logits` is `[batch, seq, d_vocab]` (read at `position` too) or already `[batch,
    d_vocab]` (store only that row when binding it into a sweep metric).
    """
    logp = jax.nn.log_softmax(at_position(logits, position).astype(jnp.float32), axis=-1)
    clean_logits = jnp.asarray(clean_logits)
    if clean_logits.ndim == 3:
        clean_logits = at_position(clean_logits, position)
    if clean_logits.shape != logp.shape:
        raise ValueError(
            f"clean_logits at the position has shape {list(clean_logits.shape)}; expected "
            f"{list(logp.shape)} (logits {list(jnp.shape(logits))})"
        )
    logq = jax.nn.log_softmax(clean_logits.astype(jnp.float32), axis=-1)
    value = (jnp.exp(logq) * (logq - logp)).sum(-1).mean()
    return _checked(value, logits, "kl_to_clean", position)


def normalized(
    metric_value: Float[ArrayLike, "*shape"],
    clean_value: Float[ArrayLike, ""],
    corrupt_value: Float[ArrayLike, ""],
) -> Float[Array, "*shape"]:
    """`(m - m_corrupt) / (m_clean - m_corrupt)`: 0 at the corrupt run, 1 at the clean run.

    Works on a whole sweep grid. Raises `ValueError` when the clean and corrupt values are
    equal (nothing to normalise by); under `jit` the same check is an `eqx.error_if`.
    """
    values = (clean_value, corrupt_value)
    if not any(isinstance(v, jax.core.Tracer) for v in values):  # checked now, even under jit
        clean, corrupt = (np.asarray(v, np.float64) for v in values)
        if not (np.all(clean != corrupt) and np.all(np.isfinite(clean - corrupt))):
            raise ValueError(
                f"cannot normalise: clean value {clean.tolist()} and corrupt value "
                f"{corrupt.tolist()} do not differ (or are not finite); the metric does not "
                "separate the clean and corrupt runs"
            )
    clean_value, corrupt_value = jnp.asarray(clean_value), jnp.asarray(corrupt_value)
    gap = eqx.error_if(
        clean_value - corrupt_value,
        (clean_value == corrupt_value) | ~jnp.isfinite(clean_value - corrupt_value),
        "normalized: clean value == corrupt value",
    )
    return (jnp.asarray(metric_value) - corrupt_value) / gap


# the metrics that read one position, each with its arguments that are logits read there too
_ONE_POSITION = (
    (logit_diff, ()),
    (prob_diff, ()),
    (cross_entropy, ()),
    (kl_to_clean, ("clean_logits",)),
)


def _one_position(fn) -> tuple[str, ...] | None:
    return next((other for f, other in _ONE_POSITION if f is fn), None)


class Bound(eqx.Module):
    """A metric `logits -> scalar`: `fn(logits, **kwargs)`; made by `bind`.

    An `eqx.Module`, so its arrays are traced (not baked in as constants) when a sweep
    compiles it; `fn` is static, so two `Bound`s of the same `fn` share the compiled sweep.
    The one-position metrics declare what they read (`positions`, `on_positions`; see the
    module docstring).
    """

    fn: Callable = eqx.field(static=True)
    kwargs: dict[str, Any]

    def __call__(self, logits: Float[Array, "batch seq d_vocab"]) -> Float[Array, ""]:
        return self.fn(logits, **self.kwargs)

    def positions(self, batch: int, seq: int) -> Int[Array, "batch 1"] | None:
        """The position each example is read at, `[batch, 1]` in `0..seq-1`; `None` when `fn`
        is not one of the one-position metrics (it may read every position)."""
        if _one_position(self.fn) is None:
            return None
        position = _position(self.kwargs.get("position", -1), batch, seq)
        position = jnp.where(position < 0, position + seq, position)
        return jnp.broadcast_to(position, (batch,))[:, None].astype(jnp.int32)

    def on_positions(self, logits_read: Float[Array, "batch n d_vocab"]) -> Float[Array, ""]:
        """The metric from only the logits at `positions(batch, seq)`, `[batch, 1, d_vocab]`."""
        logits_read = jnp.asarray(logits_read)
        others = _one_position(self.fn)
        if others is None:
            raise ValueError(
                f"{getattr(self.fn, '__name__', self.fn)!r} does not declare the positions it "
                f"reads; call the metric on the full logits (read_positions gives None for it)"
            )
        if logits_read.ndim != 3 or logits_read.shape[1] != 1:
            raise ValueError(
                f"on_positions takes the logits at the read positions, [batch, 1, d_vocab]; "
                f"got shape {list(logits_read.shape)}"
            )
        kwargs = dict(self.kwargs, position=0)
        position = self.kwargs.get("position", -1)
        for name in others:  # logits of another run, read at the same position
            value = kwargs.get(name)
            if value is not None and jnp.ndim(value) == 3:
                kwargs[name] = at_position(value, position)
        return self.fn(logits_read, **kwargs)

    @property
    def example_mean(self) -> bool:
        """Whether the metric is a mean over examples: true of the one-position metrics."""
        return _one_position(self.fn) is not None

    def per_example(
        self, logits: Float[Array, "n seq d_vocab"], rows: Int[Array, " n"] | None = None
    ) -> Float[Array, " n"]:
        """The value of each example (of the examples `rows`), whose mean is the metric."""
        return self._each(logits, rows, lambda m, x: m(x))

    def per_example_on_positions(
        self, logits_read: Float[Array, "n 1 d_vocab"], rows: Int[Array, " n"] | None = None
    ) -> Float[Array, " n"]:
        """`per_example` from the logits at `positions` only, as `on_positions`."""
        return self._each(logits_read, rows, lambda m, x: m.on_positions(x))

    def _each(self, logits, rows, call):
        if not self.example_mean:
            raise ValueError(
                f"{getattr(self.fn, '__name__', self.fn)!r} is not known to be a mean over "
                "examples; it has no per-example form (is_example_mean gives False for it)"
            )
        logits = jnp.asarray(logits)
        mine = {k: v for k, v in self.kwargs.items() if _per_example_arg(k, v)}
        if rows is not None:
            mine = {k: jnp.take(jnp.asarray(v), rows, axis=0) for k, v in mine.items()}
        for k, v in mine.items():
            if jnp.shape(v)[0] != logits.shape[0]:
                raise ValueError(
                    f"{k} has {jnp.shape(v)[0]} examples; the logits have {logits.shape[0]}"
                    + ("" if rows is None else " (the rows given)")
                )
        shared = {k: v for k, v in self.kwargs.items() if k not in mine}

        def one(x, args):
            one_row = {k: jnp.asarray(v)[None] for k, v in args.items()}
            return call(Bound(self.fn, {**shared, **one_row}), x[None])

        return jax.vmap(one)(logits, mine)


def _per_example_arg(name: str, value) -> bool:
    """Whether a one-position metric's argument holds one entry per example (batch first)."""
    least = {"answer": 1, "distractor": 1, "position": 1, "clean_logits": 2}.get(name)
    return least is not None and jnp.ndim(value) >= least


def bind(fn: Callable, **kwargs) -> Bound:
    """Fix every argument of a metric but the logits: `bind(logit_diff, answer=a, distractor=d)`.

    The result is the `metric` that `jaxcirc.patching.sweep(model, clean, corrupt, metric, ...)`
    expects. Numbers, lists and NumPy arrays become JAX arrays (so a metric bound to another
    answer or position runs the same compiled program); bools and other objects stay static.
    """
    if not callable(fn):
        raise TypeError(f"bind expects a metric function first; got {type(fn).__name__}")
    numbers = (int, float, np.number, np.ndarray, list, tuple)
    arrays = {
        k: jnp.asarray(v) if isinstance(v, numbers) and not isinstance(v, bool) else v
        for k, v in kwargs.items()
    }
    return Bound(fn, arrays)


class Normalized(eqx.Module):
    """`normalized(metric(logits), clean_value, corrupt_value)`: a metric; made by `normalize`."""

    metric: Callable
    clean_value: Float[Array, ""]
    corrupt_value: Float[Array, ""]

    def __call__(self, logits: Float[Array, "batch seq d_vocab"]) -> Float[Array, ""]:
        return normalized(self.metric(logits), self.clean_value, self.corrupt_value)

    def positions(self, batch: int, seq: int) -> Int[Array, "batch n"] | None:
        """The positions the wrapped metric reads (`read_positions` of it)."""
        return read_positions(self.metric, batch, seq)

    def on_positions(self, logits_read: Float[Array, "batch n d_vocab"]) -> Float[Array, ""]:
        """The wrapped metric's `on_positions`, normalised."""
        if not hasattr(self.metric, "on_positions"):
            raise ValueError(
                f"the wrapped metric {type(self.metric).__name__} does not declare the positions "
                "it reads; call the metric on the full logits"
            )
        value = self.metric.on_positions(logits_read)
        return normalized(value, self.clean_value, self.corrupt_value)

    @property
    def example_mean(self) -> bool:
        """Whether the wrapped metric is a mean over examples (normalising is affine)."""
        return is_example_mean(self.metric)

    def per_example(
        self, logits: Float[Array, "n seq d_vocab"], rows: Int[Array, " n"] | None = None
    ) -> Float[Array, " n"]:
        """The wrapped metric's `per_example`, normalised."""
        value = self.metric.per_example(logits, rows)
        return normalized(value, self.clean_value, self.corrupt_value)

    def per_example_on_positions(
        self, logits_read: Float[Array, "n k d_vocab"], rows: Int[Array, " n"] | None = None
    ) -> Float[Array, " n"]:
        """The wrapped metric's `per_example_on_positions`, normalised."""
        value = self.metric.per_example_on_positions(logits_read, rows)
        return normalized(value, self.clean_value, self.corrupt_value)


def normalize(metric: Callable, clean_value, corrupt_value) -> Normalized:
    """Wrap `metric` so it reads 1 on the clean run and 0 on the corrupt run.

    Raises `ValueError` at once when the two values are equal.
    """
    clean_value = jnp.asarray(clean_value, jnp.float32)
    corrupt_value = jnp.asarray(corrupt_value, jnp.float32)
    normalized(clean_value, clean_value, corrupt_value)  # the eager check
    return Normalized(metric, clean_value, corrupt_value)


def read_positions(metric: Callable, batch: int, seq: int) -> Int[Array, "batch n"] | None:
    """The positions `metric` reads from logits `[batch, seq, d_vocab]`: `[batch, n]` in
    `0..seq-1`, or `None` when it does not declare them (it may read every position).

    When not `None`, `metric.on_positions(take_along_axis(logits, positions[:, :, None], 1))`
    equals `metric(logits)`.
    """
    positions = getattr(metric, "positions", None)
    return positions(batch, seq) if callable(positions) else None


def is_example_mean(metric: Callable, *, on_positions: bool = False) -> bool:
    """Whether `metric` declares itself a mean over examples: it has `per_example` (and, with
    `on_positions`, `per_example_on_positions`) and does not say `example_mean = False`."""
    method = "per_example_on_positions" if on_positions else "per_example"
    if not callable(getattr(metric, method, None)):
        return False
    return bool(getattr(metric, "example_mean", True))
