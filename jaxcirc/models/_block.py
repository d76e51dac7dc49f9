"""Transformer blocks. The family decides the block class; the forward pass has no flags.

Each block class owns its wiring twice over: `__call__` runs it on the residual stream, and
`split` runs it with a separate residual-stream input for every head's query, key and value
and for the MLP, the form in which edge-level circuit graphs see a model (Conmy et al. 2023;
Syed et al. 2023). `split` talks to a `Wiring`: it `read`s each input port in the order the
block needs it and `write`s each output it computes, so the graph structure itself is read off
the block (`jaxcirc.graph.graph` records one abstract `split` call).

`__call__(x, prefix)` with a `KVPrefix` runs the block on a window of later positions: only
attention mixes positions, so the block hands the prefix to it and everything else is the same.
"""

from __future__ import annotations

from typing import Protocol

import equinox as eqx
import jax
from jaxtyping import Array, Float

from ._attention import Attention, KVPrefix
from ._layers import Identity, LayerNorm, RMSNorm
from ._mlp import MLP, GatedMLP
from ._site import Site, record

Norm = LayerNorm | RMSNorm | Identity


class Wiring(Protocol):
    """What a block's `split` form reads from and writes to.

    - `read(port)`: the pre-norm input of every reader on `port`, `[n, seq, d_model]`:
      `"q"` (one per query head), `"k"`, `"v"` (one per key/value head), `"mlp"` (n = 1).
    - `write(output, values, bias)`: the outputs of `"heads"` (`[n_heads, seq, d_model]`,
      each head's share without `b_O`) or `"mlp"` (`[1, seq, d_model]`), and the bias the
      component adds to the stream once (`b_O`; `None` if none).
    """

    def read(self, port: str) -> Float[Array, "n seq d_model"]: ...

    def write(self, output: str, values: Float[Array, "n seq d_model"], bias=None) -> None: ...


def _norm_each(norm, x: Float[Array, "n seq d_model"]) -> Float[Array, "n seq d_model"]:
    return jax.vmap(lambda y: norm(y)[0])(x)


def _split_heads(block, wiring: Wiring) -> None:
    q, k, v = (_norm_each(block.ln1, wiring.read(port)) for port in "qkv")
    wiring.write("heads", block.attn.heads(q, k, v), block.attn.b_O)


def _split_mlp(block, x: Float[Array, "1 seq d_model"]) -> Float[Array, "1 seq d_model"]:
    return block.mlp(block.ln2(x[0])[0])[0][None]


def _sub(acts: dict, layer, x: Array, *args) -> Array:
    """Run a sub-layer, adding its activations to `acts` in computation order."""
    y, sub_acts = layer(x, *args)
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

    def __call__(
        self, x: Float[Array, "seq d_model"], prefix: KVPrefix | None = None
    ) -> tuple[Array, dict]:
        acts: dict = {}
        x = record(acts, self.hook_resid_pre, x)
        h = _sub(acts, self.attn, _sub(acts, self.ln1, x), prefix)
        x = record(acts, self.hook_resid_mid, x + record(acts, self.hook_attn_out, h))
        h = _sub(acts, self.mlp, _sub(acts, self.ln2, x))
        x = record(acts, self.hook_resid_post, x + record(acts, self.hook_mlp_out, h))
        return x, acts

    def split(self, wiring: Wiring) -> None:
        """Heads read q, k, v; then the MLP reads the stream that includes them."""
        _split_heads(self, wiring)
        wiring.write("mlp", _split_mlp(self, wiring.read("mlp")))


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

    def __call__(
        self, x: Float[Array, "seq d_model"], prefix: KVPrefix | None = None
    ) -> tuple[Array, dict]:
        acts: dict = {}
        x = record(acts, self.hook_resid_pre, x)
        h = _sub(acts, self.attn, _sub(acts, self.ln1, x), prefix)
        attn_out = record(acts, self.hook_attn_out, h)
        mlp_out = record(acts, self.hook_mlp_out, _sub(acts, self.mlp, _sub(acts, self.ln2, x)))
        x = record(acts, self.hook_resid_post, x + attn_out + mlp_out)
        return x, acts

    def split(self, wiring: Wiring) -> None:
        """The MLP reads the same stream as the heads: before they write."""
        mlp_in = wiring.read("mlp")
        _split_heads(self, wiring)
        wiring.write("mlp", _split_mlp(self, mlp_in))


class AttnOnlyBlock(eqx.Module):
    """`x + attn(ln1(x))`: attention-only models (Elhage et al. 2021)."""

    ln1: Norm
    attn: Attention
    hook_resid_pre: Site
    hook_attn_out: Site
    hook_resid_post: Site

    def __call__(
        self, x: Float[Array, "seq d_model"], prefix: KVPrefix | None = None
    ) -> tuple[Array, dict]:
        acts: dict = {}
        x = record(acts, self.hook_resid_pre, x)
        h = _sub(acts, self.attn, _sub(acts, self.ln1, x), prefix)
        x = record(acts, self.hook_resid_post, x + record(acts, self.hook_attn_out, h))
        return x, acts

    def split(self, wiring: Wiring) -> None:
        _split_heads(self, wiring)


# sites on the summed residual stream: the split form has no place for them
STREAM_SITES = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out",
                "hook_resid_post")  # fmt: skip

Block = SequentialBlock | ParallelBlock | AttnOnlyBlock
