"""Scanned layers: consecutive blocks of one form run as one `lax.scan` over their stacked
arrays, so a deep model compiles one block body per form instead of one per layer.

Blocks keep their per-layer form in the model tree (`model.blocks[3].hook_resid_pre` is still
where an intervention goes); they are stacked inside the compiled program. Two neighbouring
blocks share a scan when their trees match once their sites are renamed `blocks.*.…`: same
classes, static settings and array shapes, the same kinds of intervention at the same sites
and equal non-array leaves. An intervention's arrays are stacked with the weights, so each
layer's applies to that layer only; a block whose interventions differ from its neighbours'
(an intervention at layer 3 alone) runs on its own, unrenamed. Nothing is dropped: the
scanned model computes what the unrolled one does, with fewer block bodies to compile.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._site import Site

if TYPE_CHECKING:
    from ._attention import KVPrefix
    from ._transformer import Transformer

STAR = "blocks.*."


def scan_layers(model: Transformer, scan: bool = True) -> Transformer:
    """`model` with its identical layers run as one `lax.scan` (`scan=False`: unrolled again).

    The forward pass (`model(tokens)`, `model.run`), `model.resume` and what runs on them
    (patching sweeps, tracing) give the same results; a deep model compiles several times
    faster. Interventions stay per layer (see `jaxcirc.models._scan`). The choice is a
    static field, `model.scan`; checkpoints do not record it.
    """
    return dataclasses.replace(model, scan=bool(scan))


def stack_form(block):
    """`block` with its sites renamed `blocks.*.…`: equal for equal blocks of any layer."""
    return jax.tree_util.tree_map(
        lambda x: (
            Site(STAR + x.name.split(".", 2)[2], x.axes, x.intervention)
            if isinstance(x, Site)
            else x
        ),
        block,
        is_leaf=lambda x: isinstance(x, Site),
    )


def _same_leaf(a, b) -> bool:
    if eqx.is_array(a) or eqx.is_array(b):
        return eqx.is_array(a) and eqx.is_array(b) and (a.shape, a.dtype) == (b.shape, b.dtype)
    try:
        return a is b or bool(a == b)
    except Exception:  # noqa: BLE001 - an uncomparable leaf: keep the blocks apart
        return False


def same_form(a, b) -> bool:
    """Whether blocks `a` and `b` can share one scanned body (arrays stacked)."""
    (la, ta), (lb, tb) = (jax.tree_util.tree_flatten(stack_form(x)) for x in (a, b))
    return ta == tb and all(_same_leaf(x, y) for x, y in zip(la, lb))


def groups(blocks) -> list[range]:
    """The layers of `blocks` as maximal runs of consecutive blocks of one form."""
    out: list[range] = []
    for i, block in enumerate(blocks):
        if out and same_form(blocks[out[-1].start], block):
            out[-1] = range(out[-1].start, i + 1)
        else:
            out.append(range(i, i + 1))
    return out


def run_blocks(
    blocks,
    x: jax.Array,
    *,
    first: int = 0,
    layer=None,
    prefixes: list[KVPrefix | None] | None = None,
    collect: bool = True,
) -> tuple[jax.Array, dict]:
    """Run `blocks` (layers `first, first + 1, …`) on `x`, each group of one form as a scan.

    `layer` (traced): blocks before it are skipped under `lax.cond`, and no activations are
    returned. `prefixes`: each block's `KVPrefix` (or `None`s). `collect`: return every
    site's activation, keyed by its layer's name.
    """
    prefixes = [None] * len(blocks) if prefixes is None else prefixes
    acts: dict = {}
    for group in groups(blocks):
        members = [blocks[i] for i in group]
        index = first + group.start
        if len(members) == 1:  # as the unrolled model: its own names
            step = lambda y, b=members[0], p=prefixes[group.start]: b(y, p)
            if layer is None:
                x, block_acts = step(x)
                acts.update(block_acts if collect else {})
            else:
                x = jax.lax.cond(index >= layer, lambda y: step(y)[0], lambda y: y, x)
            continue
        x, stacked = _scan(members, x, index, layer, [prefixes[i] for i in group], collect)
        for j in range(len(members)):  # computation order: layer by layer
            name = f"blocks.{index + j}."
            acts.update({name + k[len(STAR) :]: v[j] for k, v in stacked.items()})
    return x, acts


def stack_blocks(blocks):
    """`(weights, static)`: the array leaves of `blocks` (one form, see `same_form`) stacked on
    a new leading axis, and the non-array part they share; `eqx.combine` rebuilds one block."""
    dynamic, static = eqx.partition([stack_form(b) for b in blocks], eqx.is_array)
    return jax.tree_util.tree_map(lambda *w: jnp.stack(w), *dynamic), static[0]


def _scan(members, x, first: int, layer, prefixes, collect: bool):
    weights, static = stack_blocks(members)
    if any(p is not None for p in prefixes):
        prefix = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *prefixes)
    else:
        prefix = None
    layers = jnp.asarray(np.arange(first, first + len(members)), jnp.int32)

    def body(y, xs):
        w, p, i = xs
        block = eqx.combine(w, static)
        if layer is None:
            y, block_acts = block(y, p)
            return y, block_acts if collect else None
        return jax.lax.cond(i >= layer, lambda z: block(z, p)[0], lambda z: z, y), None

    x, stacked = jax.lax.scan(body, x, (weights, prefix, layers))
    return x, stacked or {}
