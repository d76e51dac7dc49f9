"""Divergences between the logits of a run and those of the clean model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def kl_divergence(
    logits: Float[Array, "batch seq d_vocab"], clean_logits: Float[Array, "batch seq d_vocab"]
) -> Float[Array, ""]:
    """Mean over batch and positions of `KL(clean || logits)` (ACDC's divergence; Conmy et
    al. 2023)."""
    p = jax.nn.log_softmax(clean_logits.astype(jnp.float32), -1)
    q = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    return (jnp.exp(p) * (p - q)).sum(-1).mean()
