"""Causal multi-head attention with per-head weights and grouped-query heads."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._layers import apply_rotary
from ._site import Site, record


class Attention(eqx.Module):
    """Causal attention (Vaswani et al. 2017) with grouped-query heads (Ainslie et al. 2023).

    Weights are stored per head: `W_Q: [n_heads, d_model, d_head]`,
    `W_K, W_V: [n_kv_heads, d_model, d_head]`, `W_O: [n_heads, d_head, d_model]`. Query head `h`
    reads key/value head `h // (n_heads // n_kv_heads)`. Sites: `hook_q`, `hook_k`, `hook_v`
    (before rotary), `hook_attn_scores` (masked), `hook_pattern`, `hook_z`.
    """

    W_Q: Float[Array, "n_heads d_model d_head"]
    W_K: Float[Array, "n_kv_heads d_model d_head"]
    W_V: Float[Array, "n_kv_heads d_model d_head"]
    W_O: Float[Array, "n_heads d_head d_model"]
    b_Q: Float[Array, "n_heads d_head"] | None
    b_K: Float[Array, "n_kv_heads d_head"] | None
    b_V: Float[Array, "n_kv_heads d_head"] | None
    b_O: Float[Array, " d_model"] | None
    hook_q: Site
    hook_k: Site
    hook_v: Site
    hook_attn_scores: Site
    hook_pattern: Site
    hook_z: Site
    rotary_dim: int = eqx.field(static=True)
    rotary_base: float = eqx.field(static=True)

    def __call__(self, x: Float[Array, "seq d_model"]) -> tuple[Array, dict]:
        acts: dict = {}

        def project(W, b):
            y = jnp.einsum("sm,hmd->shd", x, W)
            return y if b is None else y + b

        q = record(acts, self.hook_q, project(self.W_Q, self.b_Q))
        k = record(acts, self.hook_k, project(self.W_K, self.b_K))
        v = record(acts, self.hook_v, project(self.W_V, self.b_V))
        if self.rotary_dim:
            q = apply_rotary(q, self.rotary_dim, self.rotary_base)
            k = apply_rotary(k, self.rotary_dim, self.rotary_base)
        group = q.shape[1] // k.shape[1]
        k = jnp.repeat(k, group, axis=1)
        v = jnp.repeat(v, group, axis=1)
        seq = x.shape[0]
        scores = jnp.einsum("qhd,khd->hqk", q, k).astype(jnp.float32) / jnp.sqrt(
            jnp.float32(q.shape[-1])
        )
        causal = jnp.tril(jnp.ones((seq, seq), dtype=bool))
        scores = jnp.where(causal, scores, jnp.finfo(jnp.float32).min)
        scores = record(acts, self.hook_attn_scores, scores)
        pattern = jax.nn.softmax(scores, axis=-1).astype(x.dtype)
        pattern = record(acts, self.hook_pattern, pattern)
        z = record(acts, self.hook_z, jnp.einsum("hqk,khd->qhd", pattern, v))
        out = jnp.einsum("qhd,hdm->qm", z, self.W_O)
        return (out if self.b_O is None else out + self.b_O), acts
