"""Embeddings, unembedding and normalisation layers (one example each)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ._site import Site, record


class Embed(eqx.Module):
    W_E: Float[Array, "d_vocab d_model"]

    def __call__(self, tokens: Int[Array, " seq"]) -> Float[Array, "seq d_model"]:
        return self.W_E[tokens]


class PosEmbed(eqx.Module):
    W_pos: Float[Array, "n_ctx d_model"]

    def __call__(self, tokens: Int[Array, " seq"]) -> Float[Array, "seq d_model"]:
        return self.W_pos[: tokens.shape[0]]


class Unembed(eqx.Module):
    W_U: Float[Array, "d_model d_vocab"]
    b_U: Float[Array, " d_vocab"] | None

    def __call__(self, x: Float[Array, "seq d_model"]) -> Float[Array, "seq d_vocab"]:
        logits = x @ self.W_U
        return logits if self.b_U is None else logits + self.b_U


class LayerNorm(eqx.Module):
    """LayerNorm over `d_model`, computed in float32 (Ba et al. 2016)."""

    w: Float[Array, " d_model"]
    b: Float[Array, " d_model"]
    hook_normalized: Site
    eps: float = eqx.field(static=True)

    def __call__(self, x: Float[Array, "seq d_model"]) -> tuple[Array, dict]:
        acts: dict = {}
        x32 = x.astype(jnp.float32)
        x32 = x32 - x32.mean(-1, keepdims=True)
        y = x32 * jax.lax.rsqrt((x32**2).mean(-1, keepdims=True) + self.eps)
        y = (y * self.w + self.b).astype(x.dtype)
        return record(acts, self.hook_normalized, y), acts


class RMSNorm(eqx.Module):
    """RMSNorm over `d_model`, computed in float32 (Zhang & Sennrich 2019)."""

    w: Float[Array, " d_model"]
    hook_normalized: Site
    eps: float = eqx.field(static=True)

    def __call__(self, x: Float[Array, "seq d_model"]) -> tuple[Array, dict]:
        acts: dict = {}
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt((x32**2).mean(-1, keepdims=True) + self.eps)
        y = (y * self.w.astype(jnp.float32)).astype(x.dtype)
        return record(acts, self.hook_normalized, y), acts


class Identity(eqx.Module):
    """No normalisation (attention-only and tracr-style models)."""

    def __call__(self, x: Array) -> tuple[Array, dict]:
        return x, {}


def rotary_tables(
    seq: int, rotary_dim: int, base: float, scale: float = 1.0
) -> tuple[Float[Array, "seq rot"], Float[Array, "seq rot"]]:
    """cos/sin tables of rotary embeddings, halves layout (Su et al. 2021; HF `rotate_half`);
    `scale` divides positions (linear RoPE scaling, Chen et al. 2023, arXiv:2306.15595)."""
    inv_freq = 1.0 / (base ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim))
    if scale != 1.0:
        inv_freq = inv_freq / scale
    angles = jnp.arange(seq, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(
    x: Float[Array, "seq heads d_head"], rotary_dim: int, base: float, offset: int = 0,
    scale: float = 1.0,
) -> Float[Array, "seq heads d_head"]:
    """Rotate the first `rotary_dim` features of each head by position; row `i` of `x` is
    position `offset + i` (a window that starts at `offset`)."""
    cos, sin = rotary_tables(offset + x.shape[0], rotary_dim, base, scale)
    if offset:
        cos, sin = cos[offset:], sin[offset:]
    rot, rest = x[..., :rotary_dim].astype(jnp.float32), x[..., rotary_dim:]
    half = rotary_dim // 2
    rotated = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    rot = rot * cos[:, None, :] + rotated * sin[:, None, :]
    return jnp.concatenate([rot.astype(x.dtype), rest], axis=-1)
