"""A planted toy for interchange interventions: a network that computes `S = a + b`.

Token `t = 4a + b` (`a, b` in 0..3) embeds as the residual stream `z = [a, b, 1, noise…]`,
optionally rotated (`x = z @ rotation`), and the unembedding reads `S` back with
`logit_s = 2s(a + b) − s²`, maximal exactly at `s = a + b`. The high-level model is
`A = a, B = b, S = A + B`, so the right alignment of `A` is known: dimension 0 of the stream
(or its rotated image), against which IIA and DAS are checked (Geiger et al. 2021; 2023).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..models import TransformerConfig, build

N, D = 4, 16  # a, b in 0..N-1; residual width D


def toy_model(rotation=None, nuisance: float = 0.0, seed: int = 0):
    """The toy `S = a + b` network (`logit_s = 2s(a + b) − s²`), stream rotated by `rotation`."""
    cfg = TransformerConfig(
        d_model=D,
        n_layers=1,
        n_heads=1,
        d_head=4,
        d_vocab=N * N,
        n_ctx=4,
        block="attn_only",
        norm="none",
        positional="none",
        final_norm=False,
        attn_bias=False,
        attn_out_bias=False,
    )
    model = build(cfg, key=jax.random.key(seed))
    a, b = np.divmod(np.arange(N * N), N)
    z = np.zeros((N * N, D), np.float32)
    z[:, 0], z[:, 1], z[:, 2] = a, b, 1.0
    z[:, 3:] = nuisance * np.random.default_rng(seed).normal(size=(N * N, D - 3))
    w_u = np.zeros((D, N * N), np.float32)
    s = np.arange(2 * N - 1)
    w_u[0, s] = w_u[1, s] = 2 * s
    w_u[2, s] = -(s**2)
    w_u[2, 2 * N - 1 :] = -1e3
    rot = np.eye(D, dtype=np.float32) if rotation is None else np.asarray(rotation, np.float32)
    return eqx.tree_at(
        lambda m: (m.embed.W_E, m.unembed.W_U, m.blocks[0].attn.W_O),
        model,
        (jnp.asarray(z @ rot), jnp.asarray(rot.T @ w_u), jnp.zeros_like(model.blocks[0].attn.W_O)),
    )


def high_level():
    import jax.numpy as jnp

    from ..methods import CausalModel

    return CausalModel(
        ["a", "b", "A", "B", "S"],
        {"A": ["a"], "B": ["b"], "S": ["A", "B"]},
        {"A": lambda a: a, "B": lambda b: b, "S": jnp.add},
        ["a", "b"],
        "S",
    )
