"""Transformer blocks. The family decides the block class; the forward pass has no flags."""

from __future__ import annotations

import equinox as eqx
from jaxtyping import Array, Float

from ._attention import Attention
from ._layers import Identity, LayerNorm, RMSNorm
from ._mlp import MLP, GatedMLP
from ._site import Site, record

Norm = LayerNorm | RMSNorm | Identity


def _sub(acts: dict, layer, x: Array) -> Array:
    """Run a sub-layer, adding its activations to `acts` in computation order."""
    y, sub_acts = layer(x)
    acts.update(sub_acts)
    return y


class SequentialBlock(eqx.Module):
    """`x + attn(ln1(x))`, then `+ mlp(ln2(·))` (GPT-2, Llama)."""

    ln1: Norm
    attn: Attention
    ln2: Norm
    mlp: MLP | GatedMLP
    hook_resid_pre: Site
    hook_attn_out: Site
    hook_resid_mid: Site
    hook_mlp_out: Site
    hook_resid_post: Site

    def __call__(self, x: Float[Array, "seq d_model"]) -> tuple[Array, dict]:
        acts: dict = {}
        x = record(acts, self.hook_resid_pre, x)
        h = _sub(acts, self.attn, _sub(acts, self.ln1, x))
        x = record(acts, self.hook_resid_mid, x + record(acts, self.hook_attn_out, h))
        h = _sub(acts, self.mlp, _sub(acts, self.ln2, x))
        x = record(acts, self.hook_resid_post, x + record(acts, self.hook_mlp_out, h))
        return x, acts


class ParallelBlock(eqx.Module):
    """`x + attn(ln1(x)) + mlp(ln2(x))` (GPT-NeoX / Pythia, GPT-J); no `resid_mid`."""

    ln1: Norm
    attn: Attention
    ln2: Norm
    mlp: MLP | GatedMLP
    hook_resid_pre: Site
    hook_attn_out: Site
    hook_mlp_out: Site
    hook_resid_post: Site

    def __call__(self, x: Float[Array, "seq d_model"]) -> tuple[Array, dict]:
        acts: dict = {}
        x = record(acts, self.hook_resid_pre, x)
        attn_out = record(acts, self.hook_attn_out, _sub(acts, self.attn, _sub(acts, self.ln1, x)))
        mlp_out = record(acts, self.hook_mlp_out, _sub(acts, self.mlp, _sub(acts, self.ln2, x)))
        x = record(acts, self.hook_resid_post, x + attn_out + mlp_out)
        return x, acts


class AttnOnlyBlock(eqx.Module):
    """`x + attn(ln1(x))`: attention-only models (Elhage et al. 2021)."""

    ln1: Norm
    attn: Attention
    hook_resid_pre: Site
    hook_attn_out: Site
    hook_resid_post: Site

    def __call__(self, x: Float[Array, "seq d_model"]) -> tuple[Array, dict]:
        acts: dict = {}
        x = record(acts, self.hook_resid_pre, x)
        h = _sub(acts, self.attn, _sub(acts, self.ln1, x))
        x = record(acts, self.hook_resid_post, x + record(acts, self.hook_attn_out, h))
        return x, acts


Block = SequentialBlock | ParallelBlock | AttnOnlyBlock
