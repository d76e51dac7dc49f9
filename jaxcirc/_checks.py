"""Input checks shared by every layer: index ranges (eager, or at run time when traced) and
hyperparameter values, each failing with the bad value and the nearest valid choice.

A traced value cannot be read while tracing, so `runtime_check` puts the check into the
compiled program: when a bad element is present, a host callback raises a `ValueError`
formatted from the offending value and its index (it surfaces as a `jax.errors.
JaxRuntimeError` whose message ends with that `ValueError`). The predicate is reduced over the
whole batch under `vmap` (a `custom_vmap` rule), so a correct program pays one `cond` per
check and no host call.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_batching import custom_vmap

_INT32 = np.iinfo(np.int32)


def nearest_word(word, choices) -> str:
    """` (did you mean 'x'?)` for the closest choice, or an empty string."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.4)
    return f" (did you mean {match[0]!r}?)" if match else ""


def is_traced(x) -> bool:
    """Whether `x` is (or holds) a tracer: its values are unknown until the program runs."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(x))


# --------------------------------------------------------------------------------- run time


@dataclasses.dataclass(frozen=True)
class Message:
    """`fn(index, *values_at_index, *args)`: a runtime check's message, equal (and hashed) by
    value, so a check built again for the same message is the same program (a new closure
    per call would compile a new one, even eagerly under `vmap`)."""

    fn: Callable[..., str]
    args: tuple = ()

    def __call__(self, index, *values) -> str:
        return self.fn(index, *values, *self.args)


def _raise(describe: Callable, bad, *values) -> None:
    bad = np.asarray(bad)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(describe(index, *(np.asarray(v)[index] for v in values)))


def runtime_check(bad, describe: Message, *values) -> None:
    """Raise, when the program runs, if any element of the boolean `bad` is true.

    `describe(index, *values_at_index)` (a `Message`) formats the message from the first bad
    element's index (leading axes added by `vmap` come first) and the `values` (arrays
    broadcast to `bad`'s shape) there. Works eagerly, under `jit`, `vmap`, `scan` and `grad`.
    """
    bad = jnp.asarray(bad)
    values = tuple(jnp.broadcast_to(jnp.asarray(v), bad.shape) for v in values)
    _checker(describe)(bad, *values)


@functools.cache
def _checker(describe: Message):
    callback = functools.partial(_raise, describe)

    def fire(bad, *values):
        jax.debug.callback(callback, bad, *values)

    def skip(bad, *values):
        return None

    @custom_vmap
    def check(bad, *values):
        jax.lax.cond(bad.any(), fire, skip, bad, *values)
        return bad

    @check.def_vmap
    def _batched(axis_size, in_batched, bad, *values):  # one predicate for the whole batch
        args = [
            x if batched else jnp.broadcast_to(x, (axis_size, *x.shape))
            for x, batched in zip((bad, *values), in_batched)
        ]
        return check(*args), True

    return check


def where(index: tuple[int, ...], names: tuple[str, ...]) -> str:
    """`"row 1, position 3"` for the trailing axes of `index` named by `names`; leading axes
    (a batch, `vmap`) are named `row`."""
    lead, tail = index[: len(index) - len(names)], index[len(index) - len(names) :]
    parts = [f"{n} {i}" for n, i in zip(names, tail)]
    if lead:
        parts.insert(0, f"row {lead[0] if len(lead) == 1 else lead}")
    return ", ".join(parts)


# --------------------------------------------------------------------------------- indices


def index_range_error(
    value: int, size: int, what: str, negative: bool = True, context: str = ""
) -> str:
    """`"{what} {value} out of range{context}: valid ..."` for an index of an axis of
    `size` (negative indices counted from the end when `negative`), naming the nearest valid
    index."""
    lo = -size if negative else 0
    nearest = min(max(int(value), lo), size - 1)
    valid = f"0..{size - 1}" + (f" or {-size}..-1 from the end" if negative else "")
    return f"{what} {int(value)} out of range{context}: valid {valid} (nearest valid: {nearest})"


def _index_message(index, value, size, what, negative, context) -> str:
    return index_range_error(int(value), size, what, negative, context)


def check_index(index, size: int, what: str, *, negative: bool = True, context: str = ""):
    """Check an int index array against an axis of `size`: concrete values now (a
    `ValueError`), traced ones when the program runs (`runtime_check`). Returns `index`."""
    lo = -size if negative else 0
    if not is_traced(index):
        concrete = np.asarray(index)
        bad = (concrete < lo) | (concrete >= size)
        if bad.any():
            value = concrete[tuple(np.argwhere(bad)[0])] if concrete.ndim else concrete
            raise ValueError(index_range_error(int(value), size, what, negative, context))
        return index
    message = Message(_index_message, (size, what, negative, context))
    runtime_check((index < lo) | (index >= size), message, index)
    return index


def as_int32(value, what: str) -> np.ndarray:
    """Concrete integers (Python, NumPy of any width) as an int32 NumPy array, refusing any
    that int32 cannot hold (a cast would wrap them around silently)."""
    concrete = np.asarray(value)
    if concrete.dtype == object and all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in concrete.flat
    ):  # Python ints beyond int64
        ints = np.asarray([int(v) for v in concrete.flat], object).reshape(concrete.shape)
        bad = [v for v in ints.flat if not _INT32.min <= v <= _INT32.max]
        if bad:
            raise ValueError(f"{what} {bad[0]} does not fit in int32 ({_INT32.min}..{_INT32.max})")
        return ints.astype(np.int32)
    if concrete.dtype == bool or not np.issubdtype(concrete.dtype, np.integer):
        raise TypeError(f"{what} must be integers; got dtype {concrete.dtype}")
    if concrete.dtype.itemsize > 4 or concrete.dtype == np.uint32:
        bad = concrete[(concrete < _INT32.min) | (concrete > _INT32.max)]
        if bad.size:
            raise ValueError(
                f"{what} {int(bad.flat[0])} does not fit in int32 ({_INT32.min}..{_INT32.max}); "
                "a cast would wrap it around"
            )
    return concrete.astype(np.int32)


# --------------------------------------------------------------------------------- settings


def check_int(
    value, name: str, minimum: int = 1, maximum: int | None = None, *, allow_none: bool = False
) -> int | None:
    """`value` as an int in `minimum..maximum`, or a `ValueError` naming the nearest valid
    (`None` passes when `allow_none`)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and float(value).is_integer():
            value = int(value)
        else:
            raise TypeError(f"{name} must be an int; got {value!r}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        nearest = minimum if value < minimum else maximum
        raise ValueError(f"{name} must be {bound}; got {value} (nearest valid: {nearest})")
    return value


def check_float(
    value, name: str, low: float = -math.inf, high: float = math.inf, *,
    low_open: bool = False, high_open: bool = False,
) -> float:  # fmt: skip
    """`value` as a finite float in the interval, or a `ValueError` naming it."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.ndarray, jax.Array)):
        raise TypeError(f"{name} must be a number; got {value!r}")
    if np.ndim(value) != 0:
        raise TypeError(f"{name} must be one number; got an array of shape {np.shape(value)}")
    value = float(value)
    ok = math.isfinite(value) and (value > low if low_open else value >= low)
    ok = ok and (value < high if high_open else value <= high)
    if not ok:
        if math.isfinite(low) and math.isfinite(high):
            bound = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif math.isfinite(low):
            bound = f"{'>' if low_open else '>='} {low:g}"
        elif math.isfinite(high):
            bound = f"{'<' if high_open else '<='} {high:g}"
        else:
            bound = "(not NaN or infinite)"
        raise ValueError(f"{name} must be a finite number {bound}; got {value!r}")
    return value


def check_choices(values, choices, name: str, *, one: str) -> tuple[str, ...]:
    """A sequence of names from `choices`; a bare string is refused (it would be read as its
    characters) with the tuple it probably meant."""
    choices = tuple(choices)
    if isinstance(values, str):
        hint = f"({values!r},)" if values in choices else f"one of {list(choices)}"
        raise TypeError(
            f"{name} must be a sequence of {one}s such as {hint}; got the string {values!r}"
            f"{'' if values in choices else nearest_word(values, choices)}"
        )
    values = tuple(values)
    for v in values:
        if v not in choices:
            raise ValueError(
                f"unknown {one} {v!r}{nearest_word(v, choices)}; choices: {list(choices)}"
            )
    return values
