"""`Transformer`: embeddings, a tuple of blocks, final norm and unembedding."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

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

    def resume(self, x: Float[Array, "seq d_model"], layer) -> Float[Array, "seq d_model"]:
        """Continue a run from the residual stream `x` entering block `layer`.

        `layer` may be traced: the blocks before it are skipped under `lax.cond`, so a sweep
        over layers (patching, tracing) is one compiled program and a patch at layer `l`
        costs the blocks from `l` on only. `layer = n_layers` returns `x`.
        """
        for i, block in enumerate(self.blocks):
            x = jax.lax.cond(i >= layer, lambda x, b=block: b(x)[0], lambda x: x, x)
        return x

    def logits_at(self, x: Float[Array, "seq d_model"], positions=None) -> Array:
        """The logits of the final residual stream `x`, only at `positions` if given."""
        return self.readout(x if positions is None else x[positions])[0]

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
