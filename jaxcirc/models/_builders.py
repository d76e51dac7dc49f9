"""Builders: one per family, each a `TransformerConfig` preset plus the generic `build`.

The builder picks the layer classes (block, norm, MLP, rotary); the forward pass never
branches on the family. `from_state_dict` fills a model from flat named arrays.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from ._attention import Attention
from ._block import AttnOnlyBlock, ParallelBlock, SequentialBlock
from ._config import TransformerConfig
from ._layers import Embed, Identity, LayerNorm, PosEmbed, RMSNorm, Unembed, topk_count
from ._mlp import MLP, GatedMLP
from ._site import Site, make_site, nearest
from ._transformer import Transformer


def _topk(cfg: TransformerConfig, place: str, dim: int) -> int:
    """Entries AbsTopK keeps at `place` (0: not sparsified)."""
    return topk_count(cfg.act_topk, dim) if place in cfg.act_topk_at else 0


def _norm(cfg: TransformerConfig, name: str, layer: int | None):
    ones = jnp.ones(cfg.d_model, cfg.jnp_dtype)
    site = make_site(name, layer)
    topk = _topk(cfg, {"ln1": "attn_in", "ln2": "mlp_in"}.get(name, ""), cfg.d_model)
    if cfg.norm == "layernorm":
        return LayerNorm(ones, jnp.zeros_like(ones), site, cfg.norm_eps, topk)
    if cfg.norm == "rmsnorm":
        return RMSNorm(ones, site, cfg.norm_eps, topk)
    return Identity()


def build(cfg: TransformerConfig, *, key: PRNGKeyArray) -> Transformer:
    """A randomly initialised `Transformer` for `cfg` (normal(0, 0.02) weights, GPT-2 style)."""
    dt = cfg.jnp_dtype
    keys = iter(jax.random.split(key, 4 + 8 * cfg.n_layers))

    def normal(*shape, scale=1.0):
        return (0.02 * scale * jax.random.normal(next(keys), shape)).astype(dt)

    def zeros(*shape, present=True):
        return jnp.zeros(shape, dt) if present else None

    D, M = cfg.d_head, cfg.d_model
    out_scale = 1.0 / np.sqrt(2 * cfg.n_layers)
    blocks = []
    for layer in range(cfg.n_layers):
        H, KV = cfg.heads_at(layer), cfg.kv_heads_at(layer)  # per layer once narrowed
        attn = Attention(
            W_Q=normal(H, M, D),
            W_K=normal(KV, M, D),
            W_V=normal(KV, M, D),
            W_O=normal(H, D, M, scale=out_scale),
            b_Q=zeros(H, D, present=cfg.attn_bias),
            b_K=zeros(KV, D, present=cfg.attn_bias),
            b_V=zeros(KV, D, present=cfg.attn_bias),
            b_O=zeros(M, present=cfg.attn_out_bias),
            **{
                f"hook_{k}": make_site(k.removeprefix("attn_") if k != "attn_scores" else k, layer)
                for k in ("q", "k", "v", "attn_scores", "pattern", "z")
            },
            rotary_dim=cfg.rotary_dim if cfg.positional == "rotary" else 0,
            rotary_base=cfg.rotary_base,
            causal=cfg.causal,
            rotary_scale=cfg.rotary_scale,
            sink=jnp.zeros(H, dt) if cfg.attn_sink else None,
            topk_qkv=tuple(_topk(cfg, p, n * D) for p, n in (("q", H), ("k", KV), ("v", KV))),
            topk_out=_topk(cfg, "attn_out", M),
        )
        sites = {
            f"hook_{k}": make_site(k, layer)
            for k in ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")
        }
        if cfg.block == "attn_only":
            blocks.append(
                AttnOnlyBlock(
                    _norm(cfg, "ln1", layer),
                    attn,
                    sites["hook_resid_pre"],
                    sites["hook_attn_out"],
                    sites["hook_resid_post"],
                )
            )
            continue
        F = cfg.d_mlp_at(layer)
        mlp_sites = {
            "hook_pre": make_site("mlp_pre", layer),
            "hook_post": make_site("mlp_post", layer),
        }
        mlp_topk = dict(topk_neuron=_topk(cfg, "mlp_neuron", F), topk_out=_topk(cfg, "mlp_out", M))
        if cfg.gated_mlp:
            mlp = GatedMLP(
                W_gate=normal(M, F),
                W_in=normal(M, F),
                W_out=normal(F, M, scale=out_scale),
                b_gate=zeros(F, present=cfg.mlp_bias),
                b_in=zeros(F, present=cfg.mlp_bias),
                b_out=zeros(M, present=cfg.has_mlp_out_bias),
                hook_pre_linear=make_site("mlp_pre_linear", layer),
                act_fn=cfg.act_fn,
                **mlp_sites,
                **mlp_topk,
            )
        else:
            mlp = MLP(
                W_in=normal(M, F),
                b_in=zeros(F, present=cfg.mlp_bias),
                W_out=normal(F, M, scale=out_scale),
                b_out=zeros(M, present=cfg.has_mlp_out_bias),
                act_fn=cfg.act_fn,
                **mlp_sites,
                **mlp_topk,
            )
        if cfg.block == "parallel":
            del sites["hook_resid_mid"]
            blocks.append(
                ParallelBlock(
                    _norm(cfg, "ln1", layer), attn, _norm(cfg, "ln2", layer), mlp, **sites
                )
            )
        else:
            blocks.append(
                SequentialBlock(
                    _norm(cfg, "ln1", layer), attn, _norm(cfg, "ln2", layer), mlp, **sites
                )
            )
    W_E = normal(cfg.d_vocab, M)
    learned = cfg.positional == "learned"
    return Transformer(
        cfg=cfg,
        embed=Embed(W_E),
        hook_embed=make_site("embed"),
        pos_embed=PosEmbed(normal(cfg.n_ctx, M)) if learned else None,
        hook_pos_embed=make_site("pos_embed") if learned else None,
        blocks=tuple(blocks),
        ln_final=_norm(cfg, "ln_final", None) if cfg.final_norm else Identity(),
        unembed=Unembed(
            W_E.T if cfg.tied_embeddings else normal(M, cfg.d_vocab),
            zeros(cfg.d_vocab, present=cfg.unembed_bias),
            zeros(cfg.d_vocab, cfg.d_vocab, present=cfg.bigram),
        ),
    )


def _preset(name: str, defaults: dict):
    def builder(*, key: PRNGKeyArray | None = None, **overrides):
        cfg = TransformerConfig(**{**defaults, **overrides})
        return cfg if key is None else build(cfg, key=key)

    builder.__name__ = builder.__qualname__ = name
    return builder


_SIZES = dict(d_model=64, n_layers=2, n_heads=4, d_head=16, d_mlp=256, d_vocab=128, n_ctx=64)
gpt2 = _preset(
    "gpt2",
    dict(
        _SIZES,
        family="gpt2",
        act_fn="gelu_new",
        norm="layernorm",
        positional="learned",
        block="sequential",
        tied_embeddings=True,
    ),
)
neox = _preset(
    "neox",
    dict(
        _SIZES,
        family="gpt_neox",
        act_fn="gelu",
        norm="layernorm",
        positional="rotary",
        rotary_dim=4,
        block="parallel",
        tied_embeddings=False,
    ),
)
llama = _preset(
    "llama",
    dict(
        _SIZES,
        family="llama",
        act_fn="silu",
        norm="rmsnorm",
        norm_eps=1e-6,
        positional="rotary",
        rotary_dim=16,
        block="sequential",
        gated_mlp=True,
        attn_bias=False,
        attn_out_bias=False,
        mlp_bias=False,
        n_kv_heads=2,
    ),
)
attn_only = _preset(
    "attn_only",
    dict(
        _SIZES,
        family="attn_only",
        d_mlp=0,
        norm="layernorm",
        positional="learned",
        block="attn_only",
    ),
)
weight_sparse = _preset(
    "weight_sparse",
    dict(
        d_model=128, n_layers=2, n_heads=8, d_head=16, d_mlp=512, d_vocab=2048, n_ctx=128,
        family="weight_sparse", act_fn="gelu_new", norm="rmsnorm", positional="learned",
        block="sequential", attn_bias=False, attn_out_bias=False, mlp_bias=False,
        act_topk=0.25, attn_sink=True,
    ),
)  # fmt: skip
for _b, _family in (
    (gpt2, "GPT-2"),
    (neox, "GPT-NeoX / Pythia"),
    (llama, "Llama-style"),
    (attn_only, "attention-only"),
    (
        weight_sparse,
        "Weight-sparse (Gao et al. 2025, arXiv 2511.13653: RMSNorm, AbsTopK 1/4 at "
        "attention and MLP inputs and outputs, attention sink, no biases; `bigram=True` adds the "
        "bigram logit table)",
    ),
):
    _b.__doc__ = (
        f"{_family} preset: with `key=`, a random `Transformer`; without, its `TransformerConfig`."
        " Keyword arguments override the preset's tiny default sizes."
    )


def _path(keypath) -> str:
    return jax.tree_util.keystr(keypath, simple=True, separator=".")  # "blocks.0.attn.W_Q"


def state_dict(model: Transformer) -> dict[str, np.ndarray]:
    """The model's arrays by dotted path (`"blocks.0.attn.W_Q"`); refuses intervened models."""
    sites = jax.tree_util.tree_leaves(model, is_leaf=lambda x: isinstance(x, Site))
    intervened = [s.name for s in sites if isinstance(s, Site) and s.intervention is not None]
    if intervened:
        raise ValueError(
            f"model carries interventions at {intervened}; save it without them "
            "(jaxcirc.clear(model)) and save the interventions separately"
        )
    leaves = jax.tree_util.tree_flatten_with_path(eqx.filter(model, eqx.is_array))[0]
    return {_path(keypath): np.asarray(leaf) for keypath, leaf in leaves}


def weight_shapes(cfg: TransformerConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every array of a `Transformer` for `cfg`, by dotted path (nothing built)."""
    skeleton = eqx.filter_eval_shape(build, cfg, key=jax.random.key(0))
    return {_path(p): leaf.shape for p, leaf in jax.tree_util.tree_flatten_with_path(skeleton)[0]}


def from_state_dict(cfg: TransformerConfig, arrays: dict) -> Transformer:
    """Build a `Transformer` for `cfg` from named arrays, checking names and shapes; arrays
    already of the config's dtype stay where they are (a model placed over a mesh as it
    loads, `jaxcirc.models.shard_model`)."""
    skeleton = eqx.filter_eval_shape(build, cfg, key=jax.random.key(0))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(skeleton)
    wanted = {_path(p): leaf for p, leaf in leaves}
    missing = [n for n in wanted if n not in arrays]
    extra = [n for n in arrays if n not in wanted]
    if missing or extra:
        raise ValueError(
            f"weights do not fit {cfg.family} config: missing {missing[:5]}"
            f"{nearest(missing[0], extra) if missing and extra else ''}, unexpected {extra[:5]}"
        )
    filled = []
    for name, leaf in wanted.items():
        value = jnp.asarray(arrays[name], dtype=cfg.jnp_dtype)
        if value.shape != leaf.shape:
            raise ValueError(
                f"weight {name} has shape {value.shape}; {cfg.family} config expects {leaf.shape}"
            )
        filled.append(value)
    return jax.tree_util.tree_unflatten(treedef, filled)
