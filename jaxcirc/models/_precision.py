"""Precision: a model's floating-point arrays in another dtype.

In bfloat16 the weights and activations are bfloat16, while LayerNorm/RMSNorm statistics,
attention softmax, rotary angles and every metric compute in float32 (the model's layers and
`jaxcirc.metrics` upcast), so the methods' results stay float32. How far they move from the
float32 results is measured per method in `tests/test_bfloat16.py` and stated in the README.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp

from ._config import DTYPES, TransformerConfig


def cast(model, dtype: str):
    """`model` with every floating-point array (weights, and arrays its interventions carry)
    in `dtype`, one of `"float32"`, `"bfloat16"`, `"float16"`; a `Transformer`'s config
    records it (`model.cfg.dtype`). Integer and boolean arrays are kept as they are."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {sorted(DTYPES)}")
    target = DTYPES[dtype]

    def one(x):
        if eqx.is_array(x) and jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(target)
        return x

    out = jax.tree_util.tree_map(one, model)
    cfg = getattr(out, "cfg", None)
    if isinstance(cfg, TransformerConfig):
        out = dataclasses.replace(out, cfg=cfg.replace(dtype=dtype))
    return out
