"""Checking a user's metric before a method compiles it around the model."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

_SHAPES: dict = {}  # (metric structure, logits shape) -> output shape


def _key(metric, logits_shape, dtype):
    """What fixes a metric's output shape: its pytree structure (static fields included), the
    shapes of its arrays and the objects among its leaves; `None` when unhashable."""
    leaves, treedef = jax.tree_util.tree_flatten(metric)
    parts = []
    for leaf in leaves:
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            parts.append((tuple(leaf.shape), str(leaf.dtype)))
        else:
            parts.append(leaf)
    key = (treedef, tuple(parts), logits_shape, str(dtype))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _output_shape(metric, logits_shape, dtype):
    """`jax.eval_shape` of the metric, traced once per structure and shape (a second identical
    call of a method neither compiles nor traces its metric again)."""
    key = _key(metric, logits_shape, dtype)
    if key is not None and key in _SHAPES:
        return _SHAPES[key]
    out = jax.eval_shape(metric, jax.ShapeDtypeStruct(logits_shape, dtype))
    if key is not None:
        if len(_SHAPES) >= 256:  # a bounded cache: it holds the metrics it saw
            del _SHAPES[next(iter(_SHAPES))]
        _SHAPES[key] = out
    return out


def check_metric(
    metric: Callable,
    logits_shape: tuple[int, ...],
    *,
    what: str = "metric",
    dtype=jnp.float32,
    differentiable: bool = False,
) -> None:
    """Raise unless `metric` maps logits of `logits_shape` to one number (a floating-point
    one when `differentiable`: gradient methods differentiate it).

    Traces `metric` abstractly (`jax.eval_shape`: nothing runs or compiles), so a metric that
    returns one value per example, a tuple or an integer fails here, naming what it returned,
    instead of deep inside a compiled sweep.
    """
    if not callable(metric):
        raise TypeError(
            f"{what} must be a function of logits [batch, seq, d_vocab] returning a scalar; "
            f"got {metric!r}"
        )
    out = _output_shape(metric, tuple(logits_shape), jnp.dtype(dtype))
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(
            f"{what} must return one scalar array; for logits of shape {list(logits_shape)} it "
            f"returned {type(out).__name__} {jax.tree_util.tree_map(lambda x: x.shape, out)}"
        )
    if out.shape != ():
        hint = (
            " (one value per example? average them: .mean())"
            if out.shape[:1] == tuple(logits_shape[:1])
            else ""
        )
        raise ValueError(
            f"{what} must return a scalar; for logits of shape {list(logits_shape)} it returned "
            f"shape {list(out.shape)}{hint}"
        )
    if differentiable and not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(
            f"{what} must return a floating-point scalar (it is differentiated); "
            f"it returned dtype {out.dtype}"
        )
