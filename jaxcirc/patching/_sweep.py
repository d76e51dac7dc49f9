"""Activation patching sweeps: one compiled program over every (layer, unit).

For each unit, the clean activation is patched into the corrupted run and `metric` is read
off the patched logits, with the semantics of TransformerLens's `patching.get_act_patch_*`
(Vig et al. 2020; Meng et al. 2022; Heimersheim & Nanda 2024, "How to use and interpret
activation patching"). Which layer and unit are array data: layers run under `lax.map`,
units under a chunked `lax.map(..., batch_size=chunk)`, so the sweep traces once. The
corrupted run's residual stream is cached, and a patch at layer `l` starts there, skipping
the `l` blocks it cannot change.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .._progress import progress_bar, tick
from ..interventions import Patch, intervene, resolve
from ..models._site import SiteRef, nearest
from ..models._transformer import Transformer

# site kind -> the `per` choices it supports, each naming the axes enumerated
PER = {
    **{
        k: {"position": ("position",)}
        for k in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
    },
    **{k: {"head": ("head",), "position_head": ("position", "head")} for k in ("q", "k", "v", "z")},
    # TransformerLens orders pattern results [layer, head, dest_pos]; so do we
    "pattern": {"head": ("head",), "head_position": ("head", "position")},
}


def _check(model, clean, corrupt, site, per):
    if site not in PER:
        raise ValueError(f"cannot sweep site {site!r}{nearest(site, PER)}; choices: {sorted(PER)}")
    if per not in PER[site]:
        raise ValueError(
            f"site {site!r} sweeps per {sorted(PER[site])}; "
            f"got per={per!r}{nearest(per, PER[site])}"
        )
    resolve(model, SiteRef(site, 0))
    clean, corrupt = jnp.asarray(clean), jnp.asarray(corrupt)
    if clean.shape != corrupt.shape:
        raise ValueError(
            f"clean {clean.shape} and corrupt {corrupt.shape} must have the same shape [batch, seq]"
        )
    if clean.ndim != 2 or 0 in clean.shape:
        raise ValueError(
            f"clean and corrupt must be non-empty [batch, seq] token arrays; got {clean.shape}"
        )
    for tokens in (clean, corrupt):
        for row in tokens:
            model.check_tokens(row)
    return clean, corrupt


def _unit_grid(site: str, per: str, site_shape: tuple[int, ...], axes: tuple[str, ...]):
    """Index arrays, one per enumerated axis, over the flattened unit grid; and the grid shape."""
    names = PER[site][per]
    sizes = tuple(site_shape[axes.index(a)] for a in names)
    grids = jnp.meshgrid(*[jnp.arange(s) for s in sizes], indexing="ij")
    return {a: g.reshape(-1) for a, g in zip(names, grids)}, sizes


def sweep(
    model: Transformer,
    clean: Int[Array, "batch seq"],
    corrupt: Int[Array, "batch seq"],
    metric: Callable[[Float[Array, "batch seq d_vocab"]], Float[Array, ""]],
    site: str = "resid_pre",
    per: str = "position",
    *,
    chunk_size: int | None = None,
    logit_positions: Int[Array, " n"] | None = None,
    progress: bool = False,
) -> Float[Array, "n_layers ..."]:
    """Patch each unit's clean activation into the corrupted run; return `metric` per unit.

    **Arguments:**

    - `model`: the model (it may already carry interventions; patches are applied after them).
    - `clean`, `corrupt`: token batches of the same shape `[batch, seq]`.
    - `metric`: maps the patched logits `[batch, seq, d_vocab]` to a scalar. It is held static:
      pass the same function object to reuse the compiled sweep.
    - `site`: `resid_pre`, `resid_mid`, `resid_post`, `attn_out`, `mlp_out` (per `"position"`),
      `q`, `k`, `v`, `z` (per `"head"` or `"position_head"`), or `pattern` (per `"head"` or
      `"head_position"`, the query position).
    - `chunk_size`: units evaluated at once (vmapped); default keeps about 1 GiB live.
    - `logit_positions`: if given, only these positions are unembedded and `metric` receives
      `[batch, len(logit_positions), d_vocab]` (saves the unembedding of unread positions).
    - `progress`: show a progress bar over layers.

    **Returns:** `[n_layers, seq]` for `"position"`, `[n_layers, n_heads]` for `"head"`,
    `[n_layers, seq, n_heads]` for `"position_head"` (`n_kv_heads` for `k`, `v`),
    `[n_layers, n_heads, seq]` for `"head_position"`: the order of
    TransformerLens's `get_act_patch_*` functions.
    """
    clean, corrupt = _check(model, clean, corrupt, site, per)
    if logit_positions is not None:
        logit_positions = jnp.atleast_1d(jnp.asarray(logit_positions))
    n_layers = model.cfg.n_layers
    with progress_bar(progress, total=n_layers, desc=f"patching {site} per {per}", unit="layer"):
        out = _sweep(
            model, clean, corrupt, metric, site, per, chunk_size, logit_positions, progress
        )
        return jax.block_until_ready(out)


def _default_chunk(model: Transformer, clean, n_units: int, logit_positions) -> int:
    cfg = model.cfg
    batch, seq = clean.shape
    read = seq if logit_positions is None else logit_positions.shape[0]
    live = batch * (
        seq * (8 * cfg.d_model + 2 * cfg.d_mlp + 2 * cfg.n_heads * seq) + read * cfg.d_vocab
    )
    return max(1, min(n_units, (1 << 30) // (4 * live)))


@eqx.filter_jit
def _sweep(model, clean, corrupt, metric, site, per, chunk_size, logit_positions, progress):
    n_layers = model.cfg.n_layers
    clean_sites = jax.vmap(lambda t: model.run(t)[1].stack(site))(clean)  # [batch, layer, ...]
    cache = jax.vmap(lambda t: model.run(t)[1].stack("resid_pre"))(
        corrupt
    )  # [batch, layer, seq, d]
    site_shape = clean_sites.shape[2:]
    units, grid = _unit_grid(site, per, site_shape, SiteRef(site, 0).axes)
    n_units = math.prod(grid)
    chunk = chunk_size or _default_chunk(model, clean, n_units, logit_positions)

    def one_example(layer, unit, clean_site, resid):
        patches = {
            SiteRef(site, i): Patch(clean_site[i], mask=(layer == i), **unit)
            for i in range(n_layers)
        }
        patched = intervene(model, patches)
        x = resid[layer]
        for i, block in enumerate(patched.blocks):
            x = jax.lax.cond(i >= layer, lambda x, b=block: b(x)[0], lambda x: x, x)
        if logit_positions is not None:
            x = x[logit_positions]
        return patched.readout(x)[0]

    def one_unit(layer, unit):
        logits = jax.vmap(one_example, in_axes=(None, None, 0, 0))(layer, unit, clean_sites, cache)
        return metric(logits)

    def one_layer(layer):
        values = jax.lax.map(lambda u: one_unit(layer, u), units, batch_size=chunk)
        if progress:
            jax.debug.callback(tick, layer)
        return values

    values = jax.lax.map(one_layer, jnp.arange(n_layers))
    return values.reshape(n_layers, *grid)
