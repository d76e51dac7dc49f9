"""Feed-forward layers: the plain MLP and the gated (SwiGLU-style) MLP."""

from __future__ import annotations

import equinox as eqx
import jax
from jaxtyping import Array, Float

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
    """`W_out · act(W_in · x + b_in) + b_out`; sites `hook_pre`, `hook_post`."""

    W_in: Float[Array, "d_model d_mlp"]
    b_in: Float[Array, " d_mlp"] | None
    W_out: Float[Array, "d_mlp d_model"]
    b_out: Float[Array, " d_model"] | None
    hook_pre: Site
    hook_post: Site
    act_fn: str = eqx.field(static=True)

    def __call__(self, x: Float[Array, "seq d_model"]) -> tuple[Array, dict]:
        acts: dict = {}
        pre = record(acts, self.hook_pre, _affine(x, self.W_in, self.b_in))
        post = record(acts, self.hook_post, ACTIVATIONS[self.act_fn](pre))
        return _affine(post, self.W_out, self.b_out), acts


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

    def __call__(self, x: Float[Array, "seq d_model"]) -> tuple[Array, dict]:
        acts: dict = {}
        gate = record(acts, self.hook_pre, _affine(x, self.W_gate, self.b_gate))
        linear = record(acts, self.hook_pre_linear, _affine(x, self.W_in, self.b_in))
        post = record(acts, self.hook_post, ACTIVATIONS[self.act_fn](gate) * linear)
        return _affine(post, self.W_out, self.b_out), acts
