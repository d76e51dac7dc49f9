"""Causal multi-head attention with per-head weights and grouped-query heads."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._layers import abs_topk, apply_rotary
from ._site import Site, record


class KVPrefix(eqx.Module):
    """The keys and values of the positions before a window, as the `hook_k` / `hook_v` sites
    passed them on (before rotary): what attention over a window of later positions reads.

    A causal model's positions `< start` do not depend on later ones, so a run that changes
    only positions `>= start` can recompute those alone and attend to a cached run's prefix.
    """

    k: Float[Array, "start n_kv_heads d_head"]
    v: Float[Array, "start n_kv_heads d_head"]


class Attention(eqx.Module):
    """Causal attention (Vaswani et al. 2017) with grouped-query heads (Ainslie et al. 2023).

    Weights are stored per head: `W_Q: [n_heads, d_model, d_head]`,
    `W_K, W_V: [n_kv_heads, d_model, d_head]`, `W_O: [n_heads, d_head, d_model]`. Query head `h`
    reads key/value head `h // (n_heads // n_kv_heads)`. Sites: `hook_q`, `hook_k`, `hook_v`
    (before rotary), `hook_attn_scores` (masked), `hook_pattern`, `hook_z`. `causal=False`
    (config `causal`) drops the mask, for compiled tracr programs, which attend both ways.
    With a `KVPrefix` of `start` positions, `x` is the window of positions `start:`: queries,
    keys and values are computed for it alone (every site sees the window's positions), keys
    and values follow the prefix's, rotary and the causal mask use the true positions.
    Head counts come from the arrays' shapes, so a narrowed layer (`jaxcirc.models.narrow`) may
    have fewer heads than its neighbours, or none (then the output is `b_O`).

    Weight-sparse models (Gao et al. 2025, arXiv 2511.13653) may add an attention sink, one
    learned logit per head for an always-visible key whose value is zero (`sink`: it takes
    softmax mass without adding anything, so `hook_pattern` rows may sum to less than 1), and
    AbsTopK activation sparsity on q, k, v (over all heads' channels at a position, before the
    sites) and on the summed output (`topk_out`; then `b_O` must be absent, so that each head's
    share in the split form is its output masked by the sum's kept channels).
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
    causal: bool = eqx.field(static=True, default=True)
    rotary_scale: float = eqx.field(static=True, default=1.0)  # linear RoPE scaling
    sink: Float[Array, " n_heads"] | None = None
    topk_qkv: tuple[int, int, int] = eqx.field(static=True, default=(0, 0, 0))
    topk_out: int = eqx.field(static=True, default=0)

    def __call__(
        self, x: Float[Array, "seq d_model"], prefix: KVPrefix | None = None
    ) -> tuple[Array, dict]:
        acts: dict = {}
        q = jnp.einsum("sm,hmd->shd", x, self.W_Q)
        k = jnp.einsum("sm,hmd->shd", x, self.W_K)
        v = jnp.einsum("sm,hmd->shd", x, self.W_V)
        z = self._attend(q, k, v, acts, prefix)
        out = jnp.einsum("qhd,hdm->qm", z, self.W_O)
        return abs_topk(out if self.b_O is None else out + self.b_O, self.topk_out), acts

    def heads(
        self,
        xq: Float[Array, "n_heads seq d_model"],
        xk: Float[Array, "n_kv_heads seq d_model"],
        xv: Float[Array, "n_kv_heads seq d_model"],
    ) -> Float[Array, "n_heads seq d_model"]:
        """Each head's output (without `b_O`) when every head reads its own (normalised) q,
        k and v inputs: the split-input attention of edge-level circuit graphs."""
        q = jnp.einsum("hsm,hmd->shd", xq, self.W_Q)
        k = jnp.einsum("hsm,hmd->shd", xk, self.W_K)
        v = jnp.einsum("hsm,hmd->shd", xv, self.W_V)
        z = self._attend(q, k, v, {})
        out = jnp.einsum("qhd,hdm->hqm", z, self.W_O)
        if not self.topk_out:
            return out
        kept = abs_topk(out.sum(0), self.topk_out) != 0
        return jnp.where(kept, out, jnp.zeros((), out.dtype))

    def _attend(self, q, k, v, acts: dict, prefix=None) -> Float[Array, "seq n_heads d_head"]:
        """Biases, sites, rotary and (causal) softmax attention from projected q, k, v; keys
        and values after a `KVPrefix`'s if one is given."""

        def bias(y, b):
            return y if b is None else y + b

        tq, tk, tv = self.topk_qkv
        q = record(acts, self.hook_q, abs_topk(bias(q, self.b_Q), tq, axes=2))
        k = record(acts, self.hook_k, abs_topk(bias(k, self.b_K), tk, axes=2))
        v = record(acts, self.hook_v, abs_topk(bias(v, self.b_V), tv, axes=2))
        start = 0
        if prefix is not None:
            if not self.causal:
                raise ValueError(
                    "bidirectional attention (causal=False) cannot run a window of positions: "
                    "every position reads the later ones"
                )
            start = prefix.k.shape[0]
            k = jnp.concatenate([prefix.k.astype(k.dtype), k])
            v = jnp.concatenate([prefix.v.astype(v.dtype), v])
        if self.rotary_dim:
            q = apply_rotary(q, self.rotary_dim, self.rotary_base, start, self.rotary_scale)
            k = apply_rotary(k, self.rotary_dim, self.rotary_base, scale=self.rotary_scale)
        group = q.shape[1] // max(k.shape[1], 1)  # a narrowed layer may keep no head
        k = jnp.repeat(k, group, axis=1)
        v = jnp.repeat(v, group, axis=1)
        scores = jnp.einsum("qhd,khd->hqk", q, k).astype(jnp.float32) / jnp.sqrt(
            jnp.float32(q.shape[-1])
        )
        if self.causal:  # static; only compiled tracr programs attend to later positions
            causal = jnp.tril(jnp.ones((q.shape[0], k.shape[0]), dtype=bool), k=start)
            scores = jnp.where(causal, scores, jnp.finfo(jnp.float32).min)
        scores = record(acts, self.hook_attn_scores, scores)
        if self.sink is None:
            pattern = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        else:  # a key of value zero that every query sees: its mass is dropped
            shape = (*scores.shape[:2], 1)
            sink = jnp.broadcast_to(self.sink.astype(jnp.float32)[:, None, None], shape)
            pattern = jax.nn.softmax(jnp.concatenate([scores, sink], -1), axis=-1)[..., :-1]
            pattern = pattern.astype(v.dtype)
        pattern = record(acts, self.hook_pattern, pattern)
        return record(acts, self.hook_z, jnp.einsum("hqk,khd->qhd", pattern, v))
