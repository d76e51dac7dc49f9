"""`Transformer`: embeddings, a tuple of blocks, final norm and unembedding."""

from __future__ import annotations

import operator

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .._checks import Message, runtime_check, where
from .._finite import check_finite, describe_index, first_nonfinite, nonfinite_leaf
from ._attention import KVPrefix
from ._block import STREAM_SITES, Block, Norm
from ._config import TransformerConfig
from ._layers import Embed, PosEmbed, Unembed
from ._scan import run_blocks
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
    load one with `jaxcirc.load`. Batches: `jax.vmap(model)(tokens)`. `scan`: run identical
    layers as one `lax.scan` (set it with `jaxcirc.models.scan_layers`).
    """

    cfg: TransformerConfig = eqx.field(static=True)
    embed: Embed
    hook_embed: Site
    pos_embed: PosEmbed | None
    hook_pos_embed: Site | None
    blocks: tuple[Block, ...]
    ln_final: Norm
    unembed: Unembed
    scan: bool = eqx.field(static=True, default=False)

    def check_tokens(
        self, tokens, *, name: str = "tokens", ndim: int | None = None
    ) -> Int[Array, "*batch seq"]:
        """Validate token ids `[..., seq]` (one example or a batch of any shape) and return
        them as a JAX integer array.

        `TypeError` for non-integers; `ValueError` for a bad shape (`ndim`, when given, is
        required), an empty or over-long sequence, or an id outside `[0, d_vocab)`, naming
        the first such id, its row and position and the nearest valid id. Ids are checked
        before any cast, so one that int32 cannot hold (NumPy `int64` `2**32 + 5`) is refused,
        not wrapped. Traced tokens are checked when the program runs, with the same message
        (`jaxcirc._checks.runtime_check`: under `jit` and `vmap` too).
        """
        traced = isinstance(tokens, jax.core.Tracer)
        array = tokens if traced else np.asarray(tokens)  # numpy: concrete even under jit
        if (
            array.dtype == object
            or array.dtype == bool
            or not (jnp.issubdtype(array.dtype, jnp.integer))
        ):
            if (
                array.dtype == object
                and array.size
                and all(isinstance(v, int) and not isinstance(v, bool) for v in array.flat)
            ):
                array = np.asarray([int(v) for v in array.flat], object).reshape(array.shape)
            else:
                raise TypeError(f"{name} must be integers; got dtype {array.dtype}")
        shape = tuple(array.shape)
        if ndim == 1 and len(shape) != 1:
            raise ValueError(
                f"{name} must have shape [seq] (one example; use jax.vmap for a batch); "
                f"got shape {shape}"
            )
        if ndim is not None and len(shape) != ndim:
            axes = ", ".join(["batch"] * (ndim - 1) + ["seq"])
            raise ValueError(f"{name} must have shape [{axes}]; got shape {shape}")
        if len(shape) == 0:
            raise ValueError(f"{name} must have shape [seq] or [batch, seq]; got a scalar")
        if shape[-1] == 0:
            raise ValueError(f"{name} is empty (shape {shape}): a model needs at least one token")
        if 0 in shape:
            raise ValueError(f"{name} has no rows (shape {shape})")
        if self.pos_embed is not None and shape[-1] > self.cfg.n_ctx:
            raise ValueError(
                f"{name}: {shape[-1]} tokens exceed the context n_ctx={self.cfg.n_ctx}"
            )
        if traced:
            self._check_ids_at_runtime(tokens, name)
            return tokens
        bad = (array < 0) | (array >= self.cfg.d_vocab)
        if np.any(bad):
            index = tuple(int(i) for i in np.argwhere(np.asarray(bad, bool))[0])
            raise ValueError(_bad_token(name, int(array[index]), index, self.cfg.d_vocab))
        return jnp.asarray(np.asarray(array, np.int64) if array.dtype == object else array)

    def _check_ids_at_runtime(self, tokens, name: str = "tokens") -> None:
        vocab = self.cfg.d_vocab
        message = Message(_runtime_bad_token, (name, vocab))
        runtime_check((tokens < 0) | (tokens >= vocab), message, tokens)

    def embed_tokens(self, tokens: Int[Array, " seq"]) -> tuple[Float[Array, "seq d_model"], dict]:
        """The embedding of one example's tokens (and its sites' activations); traced tokens
        are checked when the program runs (an id outside the vocabulary raises, naming it)."""
        if isinstance(tokens, jax.core.Tracer):
            self._check_ids_at_runtime(tokens)
        acts: dict = {}
        x = record(acts, self.hook_embed, self.embed(tokens))
        if self.pos_embed is not None:
            x = x + record(acts, self.hook_pos_embed, self.pos_embed(tokens))
        return x, acts

    def readout(
        self, x: Float[Array, "seq d_model"], tokens: Int[Array, " seq"] | None = None
    ) -> tuple[Float[Array, "seq d_vocab"], dict]:
        """Final norm and unembedding; `tokens` (the run's) are needed by a bigram table."""
        x, acts = self.ln_final(x)
        return self.unembed(x, tokens), acts

    def run(self, tokens: Int[Array, " seq"]) -> tuple[Float[Array, "seq d_vocab"], Activations]:
        """Logits and every site's activation; unread activations are never materialised.

        Tokens are checked eagerly (a clear error names a bad id); the forward pass is
        compiled once per shape and model structure. Called eagerly, non-finite logits raise
        a `NonFiniteError` naming the first non-finite weight or activation.
        """
        tokens = self.check_tokens(tokens, ndim=1)
        if not isinstance(tokens, jax.core.Tracer):  # concrete selections: a clear error now
            seq = tokens.shape[0]
            for site in self.intervened_sites():
                site.intervention.check_sizes(site, {"position": seq, "key_position": seq})
        logits, acts = _run(self, tokens)
        if not isinstance(logits, jax.core.Tracer):
            check_finite(logits, "logits", axes=("position", "vocab"),
                         diagnose=lambda: self.nonfinite_report(tokens, acts))  # fmt: skip
        return logits, acts

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
        if self.scan:
            first = max(int(layer), 0) if static else 0
            blocks = self.blocks[first:until]
            layers = range(first, first + len(blocks))
            prefixes = [cache.prefix(i, start) if start else None for i in layers]
            traced = None if static else layer
            return run_blocks(blocks, x, first=first, layer=traced, prefixes=prefixes,
                              collect=False)[0]  # fmt: skip
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

    def logits_at(self, x: Float[Array, "seq d_model"], positions=None, tokens=None) -> Array:
        """The logits of the final residual stream `x`, only at `positions` if given (the
        final norm sees every position; only the read ones are unembedded). `tokens`: the
        run's tokens `[seq]`, needed by a model with a bigram logit table."""
        x = self.ln_final(x)[0]
        if positions is None:
            return self.unembed(x, tokens)
        return self.unembed(x[positions], None if tokens is None else tokens[positions])

    def intervened_sites(self) -> list[Site]:
        """The sites of this model that carry an intervention."""
        leaves = jax.tree_util.tree_leaves(self, is_leaf=lambda x: isinstance(x, Site))
        return [x for x in leaves if isinstance(x, Site) and x.intervention is not None]

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

    def nonfinite_report(self, tokens, acts: Activations | None = None) -> str | None:
        """Where non-finite values start in runs on `tokens` (`[..., seq]`): the first
        non-finite weight, else the first site (in computation order) whose activation holds
        NaN or inf, with its row, position and unit; `None` when all are finite. Slow (runs
        the model on every row): for error messages."""
        weight = nonfinite_leaf(self)
        if weight is not None:
            what = "intervention value" if ".intervention." in weight else "weight"
            return f"the model has a non-finite {what}: {weight}"
        if acts is None:
            rows = jnp.reshape(jnp.asarray(tokens), (-1, jnp.shape(tokens)[-1]))
            acts = jax.vmap(lambda t: _run(self, t)[1])(rows)
        for name in sorted(acts.values, key=_computation_order):
            x = acts.values[name]
            index = first_nonfinite(x)
            if index is not None:
                at = describe_index(index, SiteRef.parse(name).axes)
                return (
                    f"the first non-finite activation is {name} at {at} "
                    f"({np.asarray(x)[index].item()})"
                )
        return None


def _computation_order(name: str) -> tuple[int, int]:
    ref = SiteRef.parse(name)
    kinds = list(SITE_KINDS)
    layer = ref.layer if ref.layer is not None else (-1 if ref.kind != "ln_final" else 1 << 30)
    return layer, kinds.index(ref.kind)


def _runtime_bad_token(index, value, name: str, d_vocab: int) -> str:
    return _bad_token(name, int(value), index, d_vocab)


def _bad_token(name: str, value: int, index: tuple[int, ...], d_vocab: int) -> str:
    nearest = min(max(value, 0), d_vocab - 1)
    return (
        f"{name}: token id {value} at {where(index, ('position',))} is outside "
        f"[0, d_vocab={d_vocab}) (nearest valid id: {nearest})"
    )


def forward(model: Transformer, tokens: Int[Array, " seq"]) -> tuple[Array, Activations]:
    """The uncompiled forward pass; its activations keep computation order until flattened."""
    x, acts = model.embed_tokens(tokens)
    if model.scan:
        x, block_acts = run_blocks(model.blocks, x)
        acts.update(block_acts)
    else:
        for block in model.blocks:
            x, block_acts = block(x)
            acts.update(block_acts)  # dict order is computation order
    logits, final_acts = model.readout(x, tokens)
    return logits, Activations({**acts, **final_acts})


_run = eqx.filter_jit(forward)
