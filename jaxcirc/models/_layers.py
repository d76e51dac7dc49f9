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


def abs_topk(x: Array, k: int, axes: int = 1) -> Array:
    """AbsTopK (Gao et al. 2025, arXiv 2511.13653): keep the `k` entries of largest magnitude
    over the last `axes` axes (signs kept), zero the rest; `k = 0` keeps everything. Exactly
    `k` survive (ties go to the lower index); gradients flow through the kept entries."""
    if not k:
        return x
    shape = x.shape
    flat = x.reshape(*shape[: len(shape) - axes], -1)
    _, index = jax.lax.top_k(jnp.abs(flat), k)
    keep = jax.nn.one_hot(index, flat.shape[-1], dtype=bool).any(-2)
    return jnp.where(keep, flat, jnp.zeros((), flat.dtype)).reshape(shape)


def topk_count(fraction: float, dim: int) -> int:
    """`⌊fraction · dim⌋` entries kept by AbsTopK (0: off), at least 1 when on."""
    return max(1, int(fraction * dim)) if fraction else 0


class Unembed(eqx.Module):
    """`x · W_U + b_U`, plus `bigram[token]` when the model has a bigram logit table (Gao et al.
    2025): a dense `[d_vocab, d_vocab]` table read by the current token, so the layers need not
    spend weights on bigram statistics. A model with a table needs the tokens to read logits."""

    W_U: Float[Array, "d_model d_vocab"]
    b_U: Float[Array, " d_vocab"] | None
    bigram: Float[Array, "d_vocab d_vocab"] | None = None

    def __call__(
        self, x: Float[Array, "seq d_model"], tokens: Int[Array, " seq"] | None = None
    ) -> Float[Array, "seq d_vocab"]:
        logits = x @ self.W_U
        if self.b_U is not None:
            logits = logits + self.b_U
        if self.bigram is None:
            return logits
        if tokens is None:
            raise ValueError(
                "this model adds a bigram logit table (logits += bigram[token]) and this "
                "computation reads logits from the residual stream without the tokens; run "
                "it through model.run / the edge graph (which pass them), or build the model "
                "with bigram=False"
            )
        return logits + self.bigram[tokens].astype(logits.dtype)


class LayerNorm(eqx.Module):
    """LayerNorm over `d_model`, computed in float32 (Ba et al. 2016)."""

    w: Float[Array, " d_model"]
    b: Float[Array, " d_model"]
    hook_normalized: Site
    eps: float = eqx.field(static=True)
    topk: int = eqx.field(static=True, default=0)  # AbsTopK on the output (0: off)

    def __call__(self, x: Float[Array, "seq d_model"]) -> tuple[Array, dict]:
        acts: dict = {}
        x32 = x.astype(jnp.float32)
        x32 = x32 - x32.mean(-1, keepdims=True)
        y = x32 * jax.lax.rsqrt((x32**2).mean(-1, keepdims=True) + self.eps)
        y = abs_topk((y * self.w + self.b).astype(x.dtype), self.topk)
        return record(acts, self.hook_normalized, y), acts


class RMSNorm(eqx.Module):
    """RMSNorm over `d_model`, computed in float32 (Zhang & Sennrich 2019)."""

    w: Float[Array, " d_model"]
    hook_normalized: Site
    eps: float = eqx.field(static=True)
    topk: int = eqx.field(static=True, default=0)  # AbsTopK on the output (0: off)

    def __call__(self, x: Float[Array, "seq d_model"]) -> tuple[Array, dict]:
        acts: dict = {}
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt((x32**2).mean(-1, keepdims=True) + self.eps)
        y = abs_topk((y * self.w.astype(jnp.float32)).astype(x.dtype), self.topk)
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
    x: Float[Array, "seq heads d_head"],
    rotary_dim: int,
    base: float,
    offset: int = 0,
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
