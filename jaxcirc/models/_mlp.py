"""Feed-forward layers: the plain MLP and the gated (SwiGLU-style) MLP."""

from __future__ import annotations

import equinox as eqx
import jax
from jaxtyping import Array, Float

from ._layers import abs_topk
from ._site import Site, record

ACTIVATIONS = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


def _affine(x, W, b):
    y = x @ W
    return y if b is None else y + b


class MLP(eqx.Module):
    """`W_out · act(W_in · x + b_in) + b_out`; sites `hook_pre`, `hook_post`.

    `topk_neuron` / `topk_out`: AbsTopK activation sparsity (Gao et al. 2025, arXiv 2511.13653)
    on the neurons (before `hook_post`) and on the output (0: off), in both MLP kinds."""

    W_in: Float[Array, "d_model d_mlp"]
    b_in: Float[Array, " d_mlp"] | None
    W_out: Float[Array, "d_mlp d_model"]
    b_out: Float[Array, " d_model"] | None
    hook_pre: Site
    hook_post: Site
    act_fn: str = eqx.field(static=True)
    topk_neuron: int = eqx.field(static=True, default=0)
    topk_out: int = eqx.field(static=True, default=0)

    def __call__(self, x: Float[Array, "seq d_model"]) -> tuple[Array, dict]:
        acts: dict = {}
        pre = record(acts, self.hook_pre, _affine(x, self.W_in, self.b_in))
        post = abs_topk(ACTIVATIONS[self.act_fn](pre), self.topk_neuron)
        post = record(acts, self.hook_post, post)
        return abs_topk(_affine(post, self.W_out, self.b_out), self.topk_out), acts


class GatedMLP(eqx.Module):
    """`W_out · (act(W_gate · x) ⊙ W_in · x)` (Shazeer 2020, SwiGLU).

    Sites: `hook_pre` (gate pre-activation), `hook_pre_linear` (`W_in · x`), `hook_post`.
    """

    W_gate: Float[Array, "d_model d_mlp"]
    W_in: Float[Array, "d_model d_mlp"]
    W_out: Float[Array, "d_mlp d_model"]
    b_gate: Float[Array, " d_mlp"] | None
    b_in: Float[Array, " d_mlp"] | None
    b_out: Float[Array, " d_model"] | None
    hook_pre: Site
    hook_pre_linear: Site
    hook_post: Site
    act_fn: str = eqx.field(static=True)
    topk_neuron: int = eqx.field(static=True, default=0)
    topk_out: int = eqx.field(static=True, default=0)

    def __call__(self, x: Float[Array, "seq d_model"]) -> tuple[Array, dict]:
        acts: dict = {}
        gate = record(acts, self.hook_pre, _affine(x, self.W_gate, self.b_gate))
        linear = record(acts, self.hook_pre_linear, _affine(x, self.W_in, self.b_in))
        post = abs_topk(ACTIVATIONS[self.act_fn](gate) * linear, self.topk_neuron)
        post = record(acts, self.hook_post, post)
        return abs_topk(_affine(post, self.W_out, self.b_out), self.topk_out), acts
