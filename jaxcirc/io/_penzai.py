"""penzai interoperability: penzai's Llama-like and GPT-NeoX transformers (`penzai.models.
transformer.variants`) to jaxcirc `Transformer`s and back, weight for weight.

`from_penzai(lm)` reads the config penzai keeps on the model (`lm.metadata`) and its parameters by
label; `to_penzai(model)` builds the penzai model of the same config and binds the weights. Both
refuse what the other side cannot express (soft caps, sliding windows, post-norms, scaled tied
embeddings, partial rotary in a Llama-like model, ...), naming the field. `import penzai` only
happens here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..models import TransformerConfig, from_state_dict, llama, neox, state_dict

_ACTS = {"swiglu": "silu", "geglu_approx": "gelu_new", "gelu_exact": "gelu",
         "gelu_approx": "gelu_new", "relu": "relu"}  # fmt: skip
_NEOX_ACTS = {"gelu": "gelu_exact", "gelu_new": "gelu_approx", "relu": "relu"}
_LLAMA_ACTS = {"silu": "swiglu", "gelu_new": "geglu_approx"}


def _penzai():
    try:
        from penzai import pz
        from penzai.models.transformer.variants import gpt_neox, llamalike_common
    except ImportError:
        raise ImportError("penzai conversion needs penzai (pip install penzai)") from None
    return pz, llamalike_common, gpt_neox


def _refuse(what: str, value, fix: str) -> ValueError:
    return ValueError(f"{what}={value!r} has no jaxcirc equivalent; {fix}")


def _check_llamalike(c, llamalike_common) -> None:
    for field, ok in (("use_post_attn_norm", False), ("use_post_ffw_norm", False),
                      ("final_logit_softcap", None), ("attn_logits_soft_cap", None),
                      ("query_scaling_factor", "default"), ("use_layer_stack", False),
                      ("tie_embedder_and_logits", False)):  # fmt: skip
        if getattr(c, field) != ok:
            raise _refuse(f"penzai config {field}", getattr(c, field), f"supported: {ok!r}")
    types = c.attention_type if isinstance(c.attention_type, (list, tuple)) else [c.attention_type]
    for t in types:
        if not isinstance(t, llamalike_common.AttentionTypeGlobalCausal):
            raise _refuse("penzai config attention_type", t, "supported: global causal")
    if c.mlp_variant not in _ACTS:
        raise _refuse(
            "penzai config mlp_variant", c.mlp_variant, f"supported: {list(_LLAMA_ACTS.values())}"
        )


def _config(c, n_ctx: int) -> tuple[str, TransformerConfig]:
    pz, llamalike_common, gpt_neox = _penzai()
    if isinstance(c, llamalike_common.LlamalikeTransformerConfig):
        _check_llamalike(c, llamalike_common)
        d_head = c.projection_dim
        return "llama", llama(
            d_model=c.embedding_dim, n_layers=c.num_decoder_blocks,
            n_heads=c.num_kv_heads * c.query_head_multiplier, n_kv_heads=c.num_kv_heads,
            d_head=d_head, d_mlp=c.mlp_hidden_dim, d_vocab=c.vocab_size, n_ctx=n_ctx,
            act_fn=_ACTS[c.mlp_variant], norm_eps=float(c.rms_norm_eps), rotary_dim=d_head,
            rotary_base=float(c.rope_wavelength), family="penzai_llamalike",
        )  # fmt: skip
    if isinstance(c, gpt_neox.GPTNeoXTransformerConfig):
        if c.use_layer_stack:
            raise _refuse("penzai config use_layer_stack", True, "supported: False")
        if c.activation_fn not in _ACTS:
            raise _refuse(
                "penzai config activation_fn",
                c.activation_fn,
                f"supported: {list(_NEOX_ACTS.values())}",
            )
        return "neox", neox(
            d_model=c.embedding_dim, n_layers=c.num_decoder_blocks, n_heads=c.num_attention_heads,
            d_head=c.projection_dim, d_mlp=c.mlp_hidden_dim, d_vocab=c.vocab_size, n_ctx=n_ctx,
            act_fn=_ACTS[c.activation_fn], norm_eps=float(c.layernorm_epsilon),
            rotary_dim=c.rope_subset_size, rotary_base=float(c.rope_wavelength),
            family="penzai_gpt_neox",
        )  # fmt: skip
    raise TypeError(
        "from_penzai reads penzai's Llama-like and GPT-NeoX TransformerLMs (built by "
        "penzai.models.transformer.variants) with the config they were built from; got a "
        f"{type(c).__name__} config"
    )


def _table(kind: str, cfg: TransformerConfig) -> dict:
    """jaxcirc name -> (penzai label, penzai axes in jaxcirc's order)."""
    heads = {"llama": _llama_heads, "neox": lambda cfg: (("heads",), ("heads",))}[kind](cfg)
    q, kv = heads
    table = {"embed.W_E": ("transformer/embedder.embeddings", ("vocabulary", "embedding")),
             "unembed.W_U": ("transformer/lm_head.weights", ("embedding", "vocabulary")),
             "ln_final.w": ("transformer/final_norm/scale.weights", ("embedding",))}  # fmt: skip
    linear = "" if kind == "llama" else "/Linear"
    for layer in range(cfg.n_layers):
        b, a = f"transformer/block_{layer}", f"blocks.{layer}"
        table |= {
            f"{a}.ln1.w": (f"{b}/pre_attention_norm/scale.weights", ("embedding",)),
            f"{a}.ln2.w": (f"{b}/pre_ffw_norm/scale.weights", ("embedding",)),
            f"{a}.attn.W_Q": (f"{b}/attention/query{linear}.weights",
                              (*q, "embedding", "projection")),
            f"{a}.attn.W_K": (f"{b}/attention/key{linear}.weights",
                              (*kv, "embedding", "projection")),
            f"{a}.attn.W_V": (f"{b}/attention/value{linear}.weights",
                              (*kv, "embedding", "projection")),
            f"{a}.attn.W_O": (f"{b}/attention/output{linear}.weights",
                              (*q, "projection", "embedding")),
        }  # fmt: skip
        if kind == "llama":
            table |= {
                f"{a}.mlp.W_gate": (f"{b}/mlp/gating_linear.weights", ("embedding", "neurons")),
                f"{a}.mlp.W_in": (f"{b}/mlp/value_linear.weights", ("embedding", "neurons")),
                f"{a}.mlp.W_out": (f"{b}/mlp/out_linear.weights", ("neurons", "embedding")),
            }
        else:
            table |= {
                f"{a}.ln1.b": (f"{b}/pre_attention_norm/shift.bias", ("embedding",)),
                f"{a}.ln2.b": (f"{b}/pre_ffw_norm/shift.bias", ("embedding",)),
                f"{a}.attn.b_Q": (f"{b}/attention/query/AddBias.bias", ("heads", "projection")),
                f"{a}.attn.b_K": (f"{b}/attention/key/AddBias.bias", ("heads", "projection")),
                f"{a}.attn.b_V": (f"{b}/attention/value/AddBias.bias", ("heads", "projection")),
                f"{a}.attn.b_O": (f"{b}/attention/output/AddBias.bias", ("embedding",)),
                f"{a}.mlp.W_in": (f"{b}/mlp/in/Linear.weights", ("embedding", "neurons")),
                f"{a}.mlp.b_in": (f"{b}/mlp/in/AddBias.bias", ("neurons",)),
                f"{a}.mlp.W_out": (f"{b}/mlp/out/Linear.weights", ("neurons", "embedding")),
                f"{a}.mlp.b_out": (f"{b}/mlp/out/AddBias.bias", ("embedding",)),
            }
    if kind == "neox":
        table["ln_final.b"] = ("transformer/final_norm/shift.bias", ("embedding",))
    return table


def _llama_heads(cfg: TransformerConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """penzai's head axes of queries and of keys/values (`_head_info` of llamalike_common):
    query head `h` of jaxcirc is group `h // multiplier`, query head `h % multiplier`."""
    n_kv = cfg.n_kv_heads or cfg.n_heads
    if n_kv == cfg.n_heads:
        return ("heads",), ("heads",)
    if n_kv == 1:
        return ("query_heads",), ()
    return ("head_groups", "query_heads"), ("head_groups",)


def from_penzai(lm, config, *, n_ctx: int = 2048):
    """The jaxcirc `Transformer` of a penzai Llama-like or GPT-NeoX `TransformerLM` built from
    `config` (penzai keeps no full config on the model), with the same logits; `n_ctx` is the
    context length jaxcirc checks tokens against."""
    pz, _, _ = _penzai()
    kind, cfg = _config(config, n_ctx)
    _, params = pz.unbind_params(lm)
    values = {p.label: p.value for p in params}
    arrays = {}
    for name, (label, axes) in _table(kind, cfg).items():
        if label not in values:
            raise ValueError(f"the penzai model has no parameter {label!r} (for {name})")
        value = values[label]
        if set(value.named_shape) != set(axes) or value.positional_shape:
            raise ValueError(
                f"penzai parameter {label} has axes {dict(value.named_shape)}; "
                f"expected {list(axes)}"
            )
        a = np.asarray(value.unwrap(*axes))
        heads = {"W_Q": cfg.n_heads, "W_O": cfg.n_heads, "W_K": cfg.n_kv_heads or cfg.n_heads,
                 "W_V": cfg.n_kv_heads or cfg.n_heads}.get(name.rsplit(".", 1)[-1])  # fmt: skip
        arrays[name] = jnp.asarray(a if heads is None else a.reshape(heads, *a.shape[-2:]))
    return from_state_dict(cfg, arrays)


def to_penzai(model):
    """The penzai `TransformerLM` of a jaxcirc `Transformer` of the Llama-like (gated MLP,
    RMSNorm, full rotary, no biases) or GPT-NeoX (parallel block, LayerNorm, biases, partial
    rotary) kind, with the same logits."""
    pz, llamalike_common, gpt_neox = _penzai()
    cfg = model.cfg
    if cfg.block == "sequential" and cfg.gated_mlp:
        kind = "llama"
        want = dict(norm="rmsnorm", positional="rotary", rotary_dim=cfg.d_head, attn_bias=False,
                    attn_out_bias=False, mlp_bias=False, unembed_bias=False,
                    tied_embeddings=False, final_norm=True)  # fmt: skip
        acts = _LLAMA_ACTS
    elif cfg.block == "parallel" and not cfg.gated_mlp:
        kind = "neox"
        want = dict(
            norm="layernorm",
            positional="rotary",
            attn_bias=True,
            attn_out_bias=True,
            mlp_bias=True,
            unembed_bias=False,
            tied_embeddings=False,
            final_norm=True,
        )
        acts = _NEOX_ACTS
    else:
        raise ValueError(
            f"to_penzai converts Llama-like (sequential, gated MLP) and GPT-NeoX "
            f"(parallel) models; this one has block={cfg.block!r}, "
            f"gated_mlp={cfg.gated_mlp}"
        )
    extra = dict(
        layer_n_heads=None,
        layer_n_kv_heads=None,
        layer_d_mlp=None,
        mlp_out_bias=None,
        rotary_scale=1.0,
        act_topk=0.0,
        attn_sink=False,
        bigram=False,
        causal=True,
    )
    for field, ok in {**want, **extra}.items():
        if getattr(cfg, field) != ok:
            raise ValueError(
                f"TransformerConfig.{field}={getattr(cfg, field)!r} has no penzai "
                f"{kind} equivalent (needs {ok!r})"
            )
    if cfg.act_fn not in acts:
        raise ValueError(
            f"TransformerConfig.act_fn={cfg.act_fn!r} has no penzai {kind} "
            f"equivalent; supported: {list(acts)}"
        )
    dtype = jnp.dtype(cfg.dtype)
    if kind == "llama":
        n_kv = cfg.n_kv_heads or cfg.n_heads
        pcfg = llamalike_common.LlamalikeTransformerConfig(
            num_kv_heads=n_kv, query_head_multiplier=cfg.n_heads // n_kv,
            embedding_dim=cfg.d_model, projection_dim=cfg.d_head, mlp_hidden_dim=cfg.d_mlp,
            num_decoder_blocks=cfg.n_layers, vocab_size=cfg.d_vocab, mlp_variant=acts[cfg.act_fn],
            tie_embedder_and_logits=False, rope_wavelength=cfg.rotary_base,
            rms_norm_eps=cfg.norm_eps, parameter_dtype=dtype, activation_dtype=dtype,
        )  # fmt: skip
        lm = llamalike_common.build_llamalike_transformer(pcfg, init_base_rng=jax.random.key(0))
    else:
        pcfg = gpt_neox.GPTNeoXTransformerConfig(
            num_attention_heads=cfg.n_heads, embedding_dim=cfg.d_model,
            projection_dim=cfg.d_head, mlp_hidden_dim=cfg.d_mlp,
            num_decoder_blocks=cfg.n_layers, vocab_size=cfg.d_vocab,
            activation_fn=acts[cfg.act_fn], rope_subset_size=cfg.rotary_dim,
            rope_wavelength=cfg.rotary_base, layernorm_epsilon=cfg.norm_eps,
            parameter_dtype=dtype, activation_dtype=dtype,
        )  # fmt: skip
        lm = gpt_neox.build_gpt_neox_transformer(pcfg, init_base_rng=jax.random.key(0))
    unbound, params = pz.unbind_params(lm)
    arrays = state_dict(model)
    table = {label: (name, axes) for name, (label, axes) in _table(kind, cfg).items()}
    bound = []
    for p in params:
        name, axes = table[p.label]
        shape = [p.value.named_shape[a] for a in axes]
        value = jnp.asarray(arrays[name]).reshape(shape)
        bound.append(pz.Parameter(value=pz.nx.wrap(value).tag(*axes), label=p.label))
    return pz.bind_variables(unbound, bound)
