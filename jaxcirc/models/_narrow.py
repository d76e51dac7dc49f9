"""`narrow`: compile an abstraction (a sequence of `Replacement`s) into a genuinely smaller
model with narrower weight arrays (Asiaee 2026, arXiv 2602.24266), dispatched on the model class:
a `Transformer` or an `MLPClassifier`.

A pruned unit's activation is `a_P = offset_P + mix[P, K] · a_K` (`Replacement`: a constant when
its row of `mix` is zero, a fold otherwise). Its only reader is the linear map `W` that follows
the site (`W_out` of an MLP, `W_O` of attention, the next layer of an `MLPClassifier`), so

    a_K · W[K] + a_P · W[P] + b  =  a_K · (W[K] + mix[P, K]ᵀ · W[P])  +  (b + offset_P · W[P]),

and the pruned units, their rows of `W` and the weights that compute them disappear.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._builders import from_state_dict, state_dict
from ._config import TransformerConfig
from ._mlp_classifier import MLPClassifier
from ._replacement import Replacement
from ._site import SiteRef, nearest
from ._transformer import Transformer

NARROWABLE = {"mlp_post": "blocks.{l}.mlp.hook_post", "z": "blocks.{l}.attn.hook_z"}


def _site_names(cfg: TransformerConfig) -> list[str]:
    kinds = ("z",) if cfg.block == "attn_only" else ("z", "mlp_post")
    return [SiteRef(k, layer).name for layer in range(cfg.n_layers) for k in kinds]


def _parse(site: str, cfg: TransformerConfig) -> SiteRef:
    names = _site_names(cfg)
    try:
        ref = SiteRef.parse(site, names)
    except KeyError:
        raise ValueError(f"unknown site {site!r}{nearest(site, names)}") from None
    if ref.kind not in NARROWABLE:
        raise ValueError(
            f"site {site!r} (kind {ref.kind!r}) cannot be narrowed; narrowable sites: "
            + ", ".join(f"{pattern} ({kind})" for kind, pattern in NARROWABLE.items())
        )
    if ref.name not in names:
        raise ValueError(
            f"this {cfg.n_layers}-layer {cfg.block} model has no site {site!r}"
            f"{nearest(site, names)}"
        )
    return ref


def _parts(rep) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The replacement as float64 numpy: keep `[u]`, offset `[u, d]`, mix `[u*d, u*d]`."""
    arrays = (rep.keep, rep.offset, rep.mix)
    if any(isinstance(a, jax.core.Tracer) for a in arrays):
        raise ValueError(
            f"narrow builds new array shapes from the replacement of {rep.site!r}, so it cannot "
            "run under jit/vmap; call it on concrete arrays"
        )
    keep = np.asarray(rep.keep, bool)
    offset, mix = np.asarray(rep.offset, np.float64), np.asarray(rep.mix, np.float64)
    if not (np.isfinite(offset).all() and np.isfinite(mix).all()):
        bad = np.flatnonzero(~np.isfinite(offset).all(1))
        raise ValueError(
            f"replacement of {rep.site!r} has non-finite offset or mix"
            + (f" (units {bad[:5].tolist()})" if bad.size else "")
        )
    return keep, offset, mix


def _fold(W: np.ndarray, b: np.ndarray, keep_coords: np.ndarray, offset, mix):
    """`W[K] + mix[P, K]ᵀ W[P]` and `b + offset_P W[P]` for the flat reader `W` `[coords, m]`."""
    P, K = ~keep_coords, keep_coords
    W_P = W[P]
    return W[K] + mix[np.ix_(P, K)].T @ W_P, b + offset.reshape(-1)[P] @ W_P


@functools.singledispatch
def narrow(model, replacements):
    """Compile `replacements` into a smaller model of the same class with the same outputs.

    **Arguments:**

    - `model`: a `Transformer` without interventions (it may already be narrowed), or an
      `MLPClassifier` whose replaced sites carry no intervention (other sites keep theirs).
    - `replacements`: a `Replacement` or a sequence of them, at most one per site. Transformer:
      each at `blocks.{l}.mlp.hook_post` (units: MLP neurons, `d_unit = 1`) or
      `blocks.{l}.attn.hook_z` (units: heads, `d_unit = d_head`). `MLPClassifier`: each at
      `hidden.{l}` (neurons, `d_unit = 1`), keeping at least one neuron.

    **Returns:** a model whose logits equal those of `model` with each site's activation
    passed through `Replacement.apply`, up to float rounding.

    - `MLPClassifier`: the kept neurons' rows of `weights[l]` and `biases[l]` and columns of
      `weights[l + 1]` stay; constants and folds go into `biases[l + 1]` and the kept columns.
    - `Transformer`: per-layer widths go to `cfg.layer_n_heads`, `cfg.layer_n_kv_heads` and
      `cfg.layer_d_mlp`; it saves, loads, runs and lists its sites like any model.
    - Transformer MLP: the kept neurons' columns of `W_in`, `b_in` (and `W_gate`, `b_gate`)
      and rows of `W_out` stay; constants and folds go into `b_out` and the kept rows of
      `W_out`. A layer may keep no neuron (`d_mlp = 0`): its MLP then adds `b_out` only.
      `b_out` is created (config `mlp_out_bias=True`) when the model had none.
    - Transformer heads: the kept heads of `W_Q`, `b_Q`, `W_O` stay; constants and folds go
      into `b_O` (created when absent, config `attn_out_bias=True`) and the kept heads' `W_O`.
      Plain multi-head attention keeps the kept heads' `W_K`, `W_V`, `b_K`, `b_V`.
      Grouped-query attention keeps a key/value group while any of its query heads is kept;
      when every kept group keeps the same number of query heads the layer stays grouped,
      otherwise each kept query head gets its own copy of its key/value head (the layer
      becomes plain multi-head attention; same outputs, more key/value weights). A layer may
      keep no head: attention then adds `b_O`.
    """
    raise TypeError(f"narrow expects a Transformer or an MLPClassifier; got {type(model).__name__}")


def _as_sequence(replacements) -> Sequence[Replacement]:
    if isinstance(replacements, Replacement):
        replacements = [replacements]
    if not isinstance(replacements, Sequence) or not all(
        isinstance(r, Replacement) for r in replacements
    ):
        raise TypeError(
            "narrow expects a Replacement or a sequence of Replacements; got "
            f"{type(replacements).__name__}"
        )
    return replacements


@narrow.register
def _narrow_transformer(model: Transformer, replacements) -> Transformer:
    replacements = _as_sequence(replacements)
    cfg = model.cfg
    arrays = {k: np.asarray(v, np.float64) for k, v in state_dict(model).items()}
    refs: list[SiteRef] = []
    for rep in replacements:
        refs.append(_parse(rep.site, cfg))
        if refs[-1] in refs[:-1]:
            raise ValueError(f"two replacements for site {rep.site!r}; give one per site")
    heads = [cfg.heads_at(i) for i in range(cfg.n_layers)]
    kv_heads = [cfg.kv_heads_at(i) for i in range(cfg.n_layers)]
    d_mlp = None if cfg.block == "attn_only" else [cfg.d_mlp_at(i) for i in range(cfg.n_layers)]
    changes: dict = {}
    for ref, rep in zip(refs, replacements):
        layer = ref.layer
        if ref.kind == "mlp_post":
            expected = (d_mlp[layer], 1)
        else:
            expected = (heads[layer], cfg.d_head)
        if (rep.n_units, rep.d_unit) != expected:
            raise ValueError(
                f"replacement of {ref.name!r} has [n_units, d_unit] = "
                f"{(rep.n_units, rep.d_unit)}; this model's site expects {expected}"
            )
        keep, offset, mix = _parts(rep)
        if ref.kind == "mlp_post":
            d_mlp[layer] = _narrow_mlp(arrays, cfg, layer, keep, offset, mix)
            if not cfg.has_mlp_out_bias:
                changes["mlp_out_bias"] = True
        else:
            heads[layer], kv_heads[layer] = _narrow_heads(arrays, cfg, layer, keep, offset, mix)
            if not cfg.attn_out_bias:
                changes["attn_out_bias"] = True
    if changes.get("mlp_out_bias"):
        for layer in range(cfg.n_layers):
            arrays.setdefault(f"blocks.{layer}.mlp.b_out", np.zeros(cfg.d_model))
    if changes.get("attn_out_bias"):
        for layer in range(cfg.n_layers):
            arrays.setdefault(f"blocks.{layer}.attn.b_O", np.zeros(cfg.d_model))
    if heads != [cfg.n_heads] * cfg.n_layers or kv_heads != [cfg.kv_heads] * cfg.n_layers:
        changes["layer_n_heads"], changes["layer_n_kv_heads"] = tuple(heads), tuple(kv_heads)
    if d_mlp is not None and d_mlp != [cfg.d_mlp] * cfg.n_layers:
        changes["layer_d_mlp"] = tuple(d_mlp)
    new_cfg = dataclasses.replace(cfg, **changes)
    return from_state_dict(new_cfg, arrays)


def _narrow_mlp(arrays: dict, cfg: TransformerConfig, layer: int, keep, offset, mix) -> int:
    p = f"blocks.{layer}.mlp."
    W_out = arrays[p + "W_out"]
    b_out = arrays.get(p + "b_out", np.zeros(cfg.d_model))
    arrays[p + "W_out"], arrays[p + "b_out"] = _fold(W_out, b_out, keep, offset, mix)
    for name in ("W_in", "W_gate"):
        if p + name in arrays:
            arrays[p + name] = arrays[p + name][:, keep]
    for name in ("b_in", "b_gate"):
        if p + name in arrays:
            arrays[p + name] = arrays[p + name][keep]
    return int(keep.sum())


def _narrow_heads(
    arrays: dict, cfg: TransformerConfig, layer: int, keep, offset, mix
) -> tuple[int, int]:
    p = f"blocks.{layer}.attn."
    H, D, M = keep.shape[0], cfg.d_head, cfg.d_model
    W_O = arrays[p + "W_O"].reshape(H * D, M)
    b_O = arrays.get(p + "b_O", np.zeros(M))
    W_O, arrays[p + "b_O"] = _fold(W_O, b_O, np.repeat(keep, D), offset, mix)
    kept = np.flatnonzero(keep)
    arrays[p + "W_O"] = W_O.reshape(kept.size, D, M)
    for name in ("W_Q", "b_Q"):
        if p + name in arrays:
            arrays[p + name] = arrays[p + name][kept]
    KV = arrays[p + "W_K"].shape[0]
    group = H // KV
    owner = kept // group  # the key/value head each kept query head reads
    counts = np.bincount(owner, minlength=KV)
    kept_groups = np.flatnonzero(counts)
    if len(set(counts[kept_groups].tolist())) <= 1:
        kv_index = kept_groups  # uniform: stays grouped (plain MHA: group 1)
    else:
        kv_index = owner  # one copy of its key/value head per kept query head
    for name in ("W_K", "W_V", "b_K", "b_V"):
        if p + name in arrays:
            arrays[p + name] = arrays[p + name][kv_index]
    return int(kept.size), int(kv_index.size)


@narrow.register
def _narrow_mlp_classifier(model: MLPClassifier, replacements) -> MLPClassifier:
    weights, biases = list(model.weights), list(model.biases)
    seen: set[str] = set()
    for rep in _as_sequence(replacements):
        layer = model.layer_index(rep.site)
        if rep.site in seen:
            raise ValueError(f"two replacements for site {rep.site!r}; give one per site")
        seen.add(rep.site)
        if model.hidden[layer].intervention is not None:
            raise ValueError(
                f"site {rep.site!r} already carries an intervention in this model; compile the "
                f"plain model with all replacements at once"
            )
        if (rep.n_units, rep.d_unit) != (model.widths[1 + layer], 1):
            raise ValueError(
                f"replacement of {rep.site!r} has [n_units, d_unit] = "
                f"{(rep.n_units, rep.d_unit)}; this model's site expects "
                f"{(model.widths[1 + layer], 1)}"
            )
        keep, offset, mix = _parts(rep)
        if not keep.any():
            raise ValueError(f"replacement of {rep.site!r} keeps no unit; keep at least one")
        # the algebra in float64 on the reader [in, out], back to the model's dtype once
        w_next, b_next = np.asarray(weights[layer + 1], np.float64), np.asarray(biases[layer + 1])
        w_folded, b_folded = _fold(w_next.T, b_next, keep, offset, mix)
        dtype = weights[layer + 1].dtype
        weights[layer + 1], biases[layer + 1] = (
            jnp.asarray(w_folded.T, dtype),
            jnp.asarray(b_folded, dtype),
        )
        weights[layer], biases[layer] = weights[layer][keep], biases[layer][keep]
    return eqx.tree_at(lambda m: (m.weights, m.biases), model, (tuple(weights), tuple(biases)))
