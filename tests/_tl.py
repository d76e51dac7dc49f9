"""TransformerLens twins: a small random `HookedTransformer` and the same weights in jaxcirc."""

from __future__ import annotations

import warnings

import numpy as np
import torch

import jaxcirc as jc

SIZES = dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=50, n_ctx=16)


def _randomise(tl_model, seed: int, scale: float = 0.1) -> None:
    """Move LayerNorm gains off one and biases off zero, so neither hides a bug."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in tl_model.named_parameters():
            if name.endswith((".w", ".b")) or ".b_" in name:
                param.add_(scale * torch.randn(param.shape, generator=gen))


def tl_model(seed: int = 0, **overrides):
    """A random GPT-2-style `HookedTransformer`, raw init: nothing folded or centred."""
    import transformer_lens as tl

    sizes = {**SIZES, **overrides}
    cfg = tl.HookedTransformerConfig(
        **sizes,
        act_fn="gelu_new",
        normalization_type="LN",
        positional_embedding_type="standard",
        seed=seed,
        device="cpu",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # HookedTransformer -> Bridge in 4.0
        model = tl.HookedTransformer(cfg)
    _randomise(model, seed)
    return model.eval()


def to_jaxcirc(tl_model) -> jc.Transformer:
    """The jaxcirc `Transformer` with `tl_model`'s weights (TL and jaxcirc names coincide)."""
    c = tl_model.cfg
    cfg = jc.models.gpt2(
        n_layers=c.n_layers,
        d_model=c.d_model,
        n_heads=c.n_heads,
        d_head=c.d_head,
        d_mlp=c.d_mlp,
        d_vocab=c.d_vocab,
        n_ctx=c.n_ctx,
        norm_eps=c.eps,
        tied_embeddings=False,
        unembed_bias=True,
    )
    params = dict(tl_model.named_parameters())  # buffers (attn.mask, attn.IGNORE) excluded
    return jc.models.from_state_dict(cfg, {k: v.detach().numpy() for k, v in params.items()})


def tokens(batch: int, seq: int, d_vocab: int, seed: int):
    """Random clean and corrupt token batches, `[batch, seq]` each, as int64 numpy arrays."""
    rng = np.random.default_rng(seed)
    return tuple(rng.integers(0, d_vocab, (batch, seq)) for _ in range(2))
