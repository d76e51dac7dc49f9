"""Checking a user's metric before a method compiles it around the model."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


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
    out = jax.eval_shape(metric, jax.ShapeDtypeStruct(tuple(logits_shape), dtype))
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
