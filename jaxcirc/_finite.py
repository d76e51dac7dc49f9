"""Non-finite results: one check per result, and an error naming where NaN or inf first appears.

A method calls `check_finite` once on its result, eagerly, after its compiled call: one
`isfinite(...).all()` reduction per array. Only on failure is the first bad index searched
(on the host) and described: a site and position, an edge, a layer and unit, or a weight
tensor; a `diagnose` callback may then name the first non-finite weight or activation of the
model run that produced it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np


class NonFiniteError(ValueError):
    """A result, activation or weight holds NaN or infinity; the message names the first."""


@jax.jit
def _all_finite(leaves):
    flags = [jnp.isfinite(x).all() for x in leaves]
    return jnp.stack(flags).all() if flags else jnp.bool_(True)


def _inexact(x) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)


def all_finite(tree) -> bool:
    """Whether every floating-point array of `tree` is finite (one compiled reduction)."""
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if _inexact(x)]
    return bool(_all_finite(leaves)) if leaves else True


def first_nonfinite(x, valid=None) -> tuple[int, ...] | None:
    """The index of the first non-finite element of `x` (row-major; among `valid` cells if
    given), or `None`."""
    bad = ~np.isfinite(np.asarray(x))
    if valid is not None:
        bad &= np.broadcast_to(np.asarray(valid, bool), bad.shape)
    if bad.ndim == 0:
        return () if bad else None
    hits = np.argwhere(bad)
    return tuple(int(i) for i in hits[0]) if len(hits) else None


def describe_index(index: tuple[int, ...], axes: tuple[str, ...] | None) -> str:
    """`"layer 1, position 3"` (axes named by `axes`, any leading ones as `row`)."""
    if not index:
        return "the value"
    if axes is None:
        return f"index {list(index)}"
    lead = len(index) - len(axes)
    parts = [f"{a} {i}" for a, i in zip(axes[max(0, -lead) :], index[max(lead, 0) :])]
    if lead > 0:
        parts.insert(0, f"row {index[0] if lead == 1 else list(index[:lead])}")
    return ", ".join(parts)


def _value(x, index) -> str:
    return str(np.asarray(x)[index].item()) if index else str(np.asarray(x).item())


def check_finite(
    values,
    what: str,
    *,
    axes: tuple[str, ...] | Mapping[str, tuple[str, ...]] | None = None,
    names: Callable[[tuple[int, ...]], str] | None = None,
    valid=None,
    diagnose: Callable[[], str | None] | None = None,
):
    """Raise `NonFiniteError` unless every element of `values` is finite; returns `values`.

    `values`: an array or a dict of named arrays. The message names the first non-finite
    element: by `names(index)` (e.g. an edge), or by its index along `axes` (a tuple, or one
    per dict key), among the `valid` cells only (a boolean mask, e.g. a graph's edges).
    `diagnose()`, called on failure only, may add where the non-finite values start (a
    weight, a site of the model run).
    """
    items = dict(values) if isinstance(values, Mapping) else {None: values}
    arrays = {k: jnp.asarray(v) for k, v in items.items() if v is not None}
    arrays = {k: v for k, v in arrays.items() if _inexact(v)}
    masked = {k: jnp.where(jnp.asarray(valid), v, 0) if valid is not None else v
              for k, v in arrays.items()}  # fmt: skip
    if all_finite(list(masked.values())):
        return values
    message = f"non-finite {what}"
    for key, x in arrays.items():
        index = first_nonfinite(x, valid)
        if index is None:
            continue
        key_axes = axes.get(key) if isinstance(axes, Mapping) else axes
        where = names(index) if names is not None else describe_index(index, key_axes)
        label = what if key is None else f"{what} {key}"
        message = (
            f"non-finite {label}: {where} is {_value(x, index)}"
            if index
            else f"{label} is {_value(x, index)}"
        )
        break
    detail = diagnose() if diagnose is not None else None
    raise NonFiniteError(message + (f"; {detail}" if detail else ""))


def _path(path) -> str:
    """`blocks.0.attn.W_Q` from a pytree key path."""
    parts = []
    for key in path:
        name = getattr(key, "name", None) or getattr(key, "key", None)
        parts.append(str(name if name is not None else getattr(key, "idx", key)))
    return ".".join(parts)


def nonfinite_leaf(tree) -> str | None:
    """`"blocks.0.attn.W_Q [2, 1, 5] is nan"` for the first floating-point array of `tree`
    holding a non-finite value, or `None` when all are finite."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    leaves = [(p, x) for p, x in leaves if _inexact(x) and not isinstance(x, jax.core.Tracer)]
    if all_finite([x for _, x in leaves]):
        return None
    for path, x in leaves:
        index = first_nonfinite(x)
        if index is not None:
            return f"{_path(path) or 'the array'} {list(index)} is {_value(x, index)}"
    return None


def check_finite_weights(model, what: str = "the model") -> None:
    """Raise `NonFiniteError` naming the first weight tensor (and index) of `model` that holds
    NaN or infinity."""
    found = nonfinite_leaf(model)
    if found is not None:
        raise NonFiniteError(f"{what} has a non-finite weight: {found}")


def diagnose_run(model, *token_arrays) -> str | None:
    """Where non-finite values start when `model` runs on the given token batches (a Task
    stands for its clean and corrupt tokens): its first non-finite weight or activation."""
    report = getattr(model, "nonfinite_report", None)
    found = nonfinite_leaf(model)
    if found is not None:
        return f"the model has a non-finite weight: {found}"
    if report is None:
        return None
    batches = []
    for tokens in token_arrays:
        if hasattr(tokens, "clean") and hasattr(tokens, "corrupt"):
            batches += [tokens.clean, tokens.corrupt]
        elif tokens is not None:
            batches.append(tokens)
    for tokens in batches:
        try:
            found = report(tokens)
        except Exception:  # noqa: BLE001 - a diagnosis must not hide the error it explains
            found = None
        if found is not None:
            return found
    return None


def check_result(result, what: str, *, axes=None, fields=None, diagnose=None):
    """`check_finite` of a method's result: `Scores` (by edge, `require_finite`), an array, or
    a module of arrays (each named by its path; only `fields` if given). Returns `result`."""
    if hasattr(result, "require_finite"):
        return result.require_finite(what, diagnose=diagnose)
    if isinstance(result, (jax.Array, np.ndarray)):
        return check_finite(result, what, axes=axes, diagnose=diagnose)
    leaves = jax.tree_util.tree_flatten_with_path(result)[0]
    arrays = {_path(p): x for p, x in leaves if _inexact(x)}
    if fields is not None:
        arrays = {k: v for k, v in arrays.items() if k.split(".")[0] in fields}
    check_finite(arrays, what, axes=axes, diagnose=diagnose)
    return result


def finite_result(what, *, axes=None, tokens=("clean", "corrupt"), fields=None):
    """Decorate a method's public function `fn(model, ...)`: its result is checked once for
    non-finite values after it returns (`check_result`); on failure the error names the first
    bad cell and where the model's run on the `tokens` arguments turns non-finite. `what` and
    `axes` may be functions of the bound arguments (a dict, defaults included)."""

    def wrap(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def checked(*args, **kwargs):
            result = fn(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = bound.arguments
            model = arguments.get("model")
            runs = [arguments.get(name) for name in tokens]
            return check_result(
                result, what(arguments) if callable(what) else what,
                axes=axes(arguments) if callable(axes) else axes, fields=fields,
                diagnose=lambda: diagnose_run(model, *runs),
            )  # fmt: skip

        return checked

    return wrap
