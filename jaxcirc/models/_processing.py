"""Opt-in weight processing: pure `model -> model` functions that keep the computed function.

Loading is faithful; these are the TransformerLens-style simplifications (Elhage et al. 2021,
"A Mathematical Framework for Transformer Circuits", appendix on LayerNorm folding), each
applied only when asked for and each tested for equivalence.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from ._layers import Identity, LayerNorm
from ._transformer import Transformer


def _fold(norm, weights: list, biases: list, axis_of_model: list[int]):
    """Fold `norm`'s scale and shift into the weights that read its output.

    Returns the new weights, new biases (created if the norm has a shift), and the norm with
    unit scale and zero shift.
    """
    if isinstance(norm, Identity):
        return weights, biases, norm
    scale = norm.w
    shift = norm.b if isinstance(norm, LayerNorm) else None
    new_w, new_b = [], []
    for W, b, axis in zip(weights, biases, axis_of_model):
        shape = [1] * W.ndim
        shape[axis] = -1
        new_w.append(W * scale.reshape(shape))
        if shift is None:
            new_b.append(b)
            continue
        moved = jnp.tensordot(shift, W, axes=([0], [axis]))
        new_b.append(moved if b is None else b + moved)
    unit = eqx.tree_at(lambda n: n.w, norm, jnp.ones_like(norm.w))
    if shift is not None:
        unit = eqx.tree_at(lambda n: n.b, unit, jnp.zeros_like(norm.b))
    return new_w, new_b, unit


def _set(model, where, values):
    return eqx.tree_at(where, model, values, is_leaf=lambda x: x is None)


def fold_layer_norm(model: Transformer) -> Transformer:
    """Fold every norm's scale (and LayerNorm's shift) into the weights that read it.

    The norms remain but with unit scale and zero shift, so `hook_normalized` sites now hold
    the normalised activation before the (folded) affine map. Logits are unchanged.
    """
    for i, block in enumerate(model.blocks):
        attn = block.attn
        (wq, wk, wv), (bq, bk, bv), ln1 = _fold(
            block.ln1, [attn.W_Q, attn.W_K, attn.W_V], [attn.b_Q, attn.b_K, attn.b_V], [1, 1, 1]
        )
        model = _set(
            model,
            lambda m: (
                m.blocks[i].ln1,
                m.blocks[i].attn.W_Q,
                m.blocks[i].attn.W_K,
                m.blocks[i].attn.W_V,
                m.blocks[i].attn.b_Q,
                m.blocks[i].attn.b_K,
                m.blocks[i].attn.b_V,
            ),
            (ln1, wq, wk, wv, bq, bk, bv),
        )
        if not hasattr(block, "mlp"):
            continue
        mlp = block.mlp
        names = ["W_in", "W_gate"] if hasattr(mlp, "W_gate") else ["W_in"]
        bias_names = ["b_in", "b_gate"][: len(names)]
        ws, bs, ln2 = _fold(
            block.ln2,
            [getattr(mlp, n) for n in names],
            [getattr(mlp, n) for n in bias_names],
            [0] * len(names),
        )
        model = _set(
            model,
            lambda m: (m.blocks[i].ln2, *[getattr(m.blocks[i].mlp, n) for n in names + bias_names]),
            (ln2, *ws, *bs),
        )
    (wu,), (bu,), ln_final = _fold(model.ln_final, [model.unembed.W_U], [model.unembed.b_U], [0])
    return _set(model, lambda m: (m.ln_final, m.unembed.W_U, m.unembed.b_U), (ln_final, wu, bu))


def _uses_only_layer_norm(model: Transformer) -> bool:
    norms = [model.ln_final] + [
        getattr(b, n) for b in model.blocks for n in ("ln1", "ln2") if hasattr(b, n)
    ]
    return all(isinstance(n, LayerNorm) for n in norms)


def center_writing_weights(model: Transformer) -> Transformer:
    """Remove the mean over `d_model` from every weight and bias that writes to the residual.

    Valid only when every reader of the residual stream is a LayerNorm (which subtracts the
    mean anyway); raises otherwise. Logits are unchanged; residual activations are centred.
    """
    if not _uses_only_layer_norm(model):
        raise ValueError(
            "center_writing_weights needs LayerNorm before every reader of the residual stream; "
            f"this {model.cfg.family} model uses {model.cfg.norm!r}"
        )

    def centre(x):
        return None if x is None else x - x.mean(-1, keepdims=True)

    leaves = [lambda m: m.embed.W_E]
    if model.pos_embed is not None:
        leaves.append(lambda m: m.pos_embed.W_pos)
    for i, block in enumerate(model.blocks):
        leaves += [lambda m, i=i: m.blocks[i].attn.W_O, lambda m, i=i: m.blocks[i].attn.b_O]
        if hasattr(block, "mlp"):
            leaves += [lambda m, i=i: m.blocks[i].mlp.W_out, lambda m, i=i: m.blocks[i].mlp.b_out]
    for where in leaves:
        model = _set(model, where, centre(where(model)))
    return model


def center_unembed(model: Transformer) -> Transformer:
    """Remove the mean over the vocabulary from `W_U` and `b_U`; the softmax is unchanged."""
    W_U, b_U = model.unembed.W_U, model.unembed.b_U
    new_b = None if b_U is None else b_U - b_U.mean()
    return _set(
        model, lambda m: (m.unembed.W_U, m.unembed.b_U), (W_U - W_U.mean(-1, keepdims=True), new_b)
    )
