"""`Transformer`: embeddings, a tuple of blocks, final norm and unembedding."""

from __future__ import annotations

import operator

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._attention import KVPrefix
from ._block import STREAM_SITES, Block, Norm
from ._config import TransformerConfig
from ._layers import Embed, PosEmbed, Unembed
from ._site import SITE_KINDS, Site, SiteRef, nearest, record


class Activations(eqx.Module):
    """The activations of a run, keyed by TransformerLens name; also indexable by `SiteRef`.

    `acts["blocks.3.hook_resid_pre"]`, `acts[SiteRef("resid_pre", 3)]`, and
    `acts.stack("resid_pre")` (all layers, stacked on a new leading axis) all work.
    """

    values: dict[str, Array]

    def __getitem__(self, key: str | SiteRef) -> Array:
        name = key.name if isinstance(key, SiteRef) else key
        if name not in self.values:
            raise KeyError(f"no activation {name!r}{nearest(name, self.values)}")
        return self.values[name]

    def __contains__(self, key: str | SiteRef) -> bool:
        return (key.name if isinstance(key, SiteRef) else key) in self.values

    def keys(self):
        return self.values.keys()

    def stack(self, kind: str) -> Array:
        """All layers' activations of `kind`, stacked on a new axis before the site's axes."""
        layers = []
        while SiteRef(kind, len(layers)).name in self.values:
            layers.append(self.values[SiteRef(kind, len(layers)).name])
        if not layers:
            raise KeyError(f"no activations of kind {kind!r} in this run")
        if len({layer.shape for layer in layers}) > 1:
            raise ValueError(
                f"cannot stack {kind!r}: its layers have different shapes "
                f"{[layer.shape for layer in layers]} (a narrowed model, jaxcirc.models.narrow); "
                "read each layer by name instead"
            )
        return jnp.stack(layers, axis=-len(SITE_KINDS[kind][1]) - 1)


class KVCache(eqx.Module):
    """Every layer's keys and values of one run, as its `hook_k` / `hook_v` sites passed them
    on (before rotary): what `Transformer.resume(..., start=s)` attends to at positions `< s`.

    Make one with `model.kv_cache(acts)` from the activations of `model.run(tokens)`.
    """

    k: tuple[Float[Array, "seq n_kv_heads d_head"], ...]
    v: tuple[Float[Array, "seq n_kv_heads d_head"], ...]

    def prefix(self, layer: int, start: int) -> KVPrefix:
        """Layer `layer`'s keys and values of the positions before `start`."""
        return KVPrefix(self.k[layer][:start], self.v[layer][:start])


class Transformer(eqx.Module):
    """A decoder-only transformer on one example: `model(tokens) -> logits`.

    Build one with a family builder (`jaxcirc.models.gpt2`, `neox`, `llama`, `attn_only`) or
    load one with `jaxcirc.load`. Batches: `jax.vmap(model)(tokens)`.
    """

    cfg: TransformerConfig = eqx.field(static=True)
    embed: Embed
    hook_embed: Site
    pos_embed: PosEmbed | None
    hook_pos_embed: Site | None
    blocks: tuple[Block, ...]
    ln_final: Norm
    unembed: Unembed

    def check_tokens(self, tokens) -> Int[Array, " seq"]:
        """Validate one example's tokens; raise a `ValueError` naming what is wrong."""
        if not jnp.issubdtype(jnp.asarray(tokens).dtype, jnp.integer):
            raise TypeError(f"tokens must be integers; got dtype {jnp.asarray(tokens).dtype}")
        if tokens.ndim != 1:
            raise ValueError(
                f"tokens must have shape [seq] (one example; use jax.vmap for a batch); "
                f"got shape {tokens.shape}"
            )
        if tokens.shape[0] == 0:
            raise ValueError("tokens is empty: a model needs at least one token")
        if self.pos_embed is not None and tokens.shape[0] > self.cfg.n_ctx:
            raise ValueError(f"{tokens.shape[0]} tokens exceed the context n_ctx={self.cfg.n_ctx}")
        if not isinstance(tokens, jax.core.Tracer):
            bad = np.flatnonzero(
                (np.asarray(tokens) < 0) | (np.asarray(tokens) >= self.cfg.d_vocab)
            )
            if bad.size:
                raise ValueError(
                    f"token id {int(tokens[bad[0]])} at position {int(bad[0])} is outside "
                    f"[0, d_vocab={self.cfg.d_vocab})"
                )
            return jnp.asarray(tokens)
        return eqx.error_if(
            tokens,
            (tokens < 0) | (tokens >= self.cfg.d_vocab),
            f"token ids must lie in [0, d_vocab={self.cfg.d_vocab})",
        )

    def embed_tokens(self, tokens: Int[Array, " seq"]) -> tuple[Float[Array, "seq d_model"], dict]:
        acts: dict = {}
        x = record(acts, self.hook_embed, self.embed(tokens))
        if self.pos_embed is not None:
            x = x + record(acts, self.hook_pos_embed, self.pos_embed(tokens))
        return x, acts

    def readout(self, x: Float[Array, "seq d_model"]) -> tuple[Float[Array, "seq d_vocab"], dict]:
        x, acts = self.ln_final(x)
        return self.unembed(x), acts

    def run(self, tokens: Int[Array, " seq"]) -> tuple[Float[Array, "seq d_vocab"], Activations]:
        """Logits and every site's activation; unread activations are never materialised.

        Tokens are checked eagerly (a clear error names a bad id); the forward pass is
        compiled once per shape and model structure.
        """
        return _run(self, self.check_tokens(jnp.asarray(tokens)))

    def __call__(self, tokens: Int[Array, " seq"]) -> Float[Array, "seq d_vocab"]:
        return self.run(tokens)[0]

    def resume(
        self,
        x: Float[Array, "window d_model"],
        layer,
        *,
        start: int | None = None,
        cache: KVCache | None = None,
        until: int | None = None,
    ) -> Float[Array, "window d_model"]:
        """Continue a run from the residual stream `x` entering block `layer`.

        `layer` may be traced: the blocks before it are skipped under `lax.cond`, so a sweep
        over layers (patching, tracing) is one compiled program and a patch at layer `l`
        costs the blocks from `l` on only; a Python int skips them without `cond`.
        `layer = n_layers` returns `x`. `until` (static) stops before block `until`.

        With `start` (a static int) and the `cache` of a run (`kv_cache`), `x` holds only the
        positions `start:` and the blocks recompute those alone, attending to the cached keys
        and values of the positions before `start`. In a causal model a change at position
        `p` leaves every earlier position unchanged in every layer (Vig et al. 2020; Heimersheim
        & Nanda 2024), so a patch at `p` needs the positions from `p` on only. The sites on
        the way see the window: row 0 of their activation is position `start`, so
        interventions that select positions must count from there.
        """
        start = 0 if start is None else operator.index(start)
        if start:
            if cache is None:
                raise ValueError(
                    f"resume(start={start}) needs the cache of a run (model.kv_cache(acts)) "
                    "for the keys and values of the positions before start"
                )
            if not self.cfg.causal:
                raise ValueError(
                    "a bidirectional model (causal=False) cannot resume from a position: "
                    "every position reads the later ones"
                )
            if len(cache.k) != len(self.blocks) or cache.k[0].shape[0] < start:
                raise ValueError(
                    f"cache has {len(cache.k)} layers of {cache.k[0].shape[0]} positions; "
                    f"resume(start={start}) needs {len(self.blocks)} layers of at least {start}"
                )
        static = isinstance(layer, (int, np.integer))
        for i, block in enumerate(self.blocks[:until]):
            if static and i < layer:
                continue
            prefix = cache.prefix(i, start) if start else None
            step = lambda x, b=block, p=prefix: b(x, p)[0]
            if static:
                x = step(x)
            else:
                x = jax.lax.cond(i >= layer, step, lambda x: x, x)
        return x

    def kv_cache(self, acts: Activations) -> KVCache:
        """The keys and values of one example's run (`acts` from `run`) that `resume` reads."""
        layers = range(len(self.blocks))
        return KVCache(
            tuple(acts[SiteRef("k", i)] for i in layers),
            tuple(acts[SiteRef("v", i)] for i in layers),
        )

    def logits_at(self, x: Float[Array, "seq d_model"], positions=None) -> Array:
        """The logits of the final residual stream `x`, only at `positions` if given (the
        final norm sees every position; only the read ones are unembedded)."""
        x = self.ln_final(x)[0]
        return self.unembed(x if positions is None else x[positions])

    def stream_interventions(self) -> tuple[str, ...]:
        """Names of the residual-stream sites (`resid_pre`, `attn_out`, `resid_mid`,
        `mlp_out`, `resid_post`) that carry an intervention: the split form of a block
        (`split`, what edge graphs run) has no single stream for them to act on."""
        return tuple(
            site.name
            for block in self.blocks
            for field in STREAM_SITES
            if (site := getattr(block, field, None)) is not None and site.intervention is not None
        )


def forward(model: Transformer, tokens: Int[Array, " seq"]) -> tuple[Array, Activations]:
    """The uncompiled forward pass; its activations keep computation order until flattened."""
    x, acts = model.embed_tokens(tokens)
    for block in model.blocks:
        x, block_acts = block(x)
        acts.update(block_acts)  # dict order is computation order
    logits, final_acts = model.readout(x)
    return logits, Activations({**acts, **final_acts})


_run = eqx.filter_jit(forward)
