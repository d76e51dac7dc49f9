"""`intervene`: substitute interventions at sites, returning a new model; `sites`: list them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp

from ..models._site import SITE_KINDS, AbstractIntervention, Site, SiteRef, nearest
from ..models._transformer import Transformer, forward
from ._library import AbstractSelectiveIntervention, Chain

SiteKey = str | SiteRef


def sites(model: Transformer, kind: str | None = None) -> tuple[SiteRef, ...]:
    """The sites of `model` in computation order, all of them or those of one `kind`."""
    if kind is not None and kind not in SITE_KINDS:
        raise ValueError(f"unknown site kind {kind!r}{nearest(kind, SITE_KINDS)}")
    order: list[str] = []  # recorded while tracing: pytree dicts come back sorted by key
    bare = clear(model)  # interventions made for other sequence lengths must not run here

    def trace(tokens):
        order.extend(forward(bare, tokens)[1].keys())

    eqx.filter_eval_shape(trace, jnp.zeros(1, jnp.int32))
    refs = tuple(SiteRef.parse(name) for name in order)
    return refs if kind is None else tuple(r for r in refs if r.kind == kind)


def resolve(model: Transformer, key: SiteKey) -> SiteRef:
    """Turn a name or `SiteRef` into a `SiteRef` that exists in `model`, or raise."""
    if isinstance(key, str):
        key = SiteRef.parse(key, [r.name for r in sites(model)])
    elif not isinstance(key, SiteRef):
        raise TypeError(
            f"a site is a name like 'blocks.0.hook_resid_pre' or a SiteRef; got {key!r}"
        )
    if key.layer is not None and not 0 <= key.layer < model.cfg.n_layers:
        raise ValueError(
            f"layer {key.layer} out of range for site {key.kind!r}: the model has "
            f"{model.cfg.n_layers} layers (0..{model.cfg.n_layers - 1})"
        )
    try:
        _get(model, key)
    except AttributeError:
        present = sorted({r.kind for r in sites(model)})
        raise ValueError(
            f"this {model.cfg.family} model has no site {key.name!r}{nearest(key.kind, present)}; "
            f"its kinds: {present}"
        ) from None
    return key


def _get(model: Transformer, ref: SiteRef) -> Site:
    node = model
    for part in ref.name.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    if not isinstance(node, Site):
        raise AttributeError(ref.name)
    return node


def intervene(
    model: Transformer,
    interventions: Mapping[SiteKey, AbstractIntervention | Sequence[AbstractIntervention]],
) -> Transformer:
    """Return a copy of `model` with `interventions` at their sites; `model` is unchanged.

    A site that already carries an intervention keeps it and applies the new one after it
    (`Chain`); a sequence of interventions for one site is applied in order.

    ```python
    patched = jc.intervene(model, {"blocks.1.attn.hook_z": jc.Patch(z_clean, head=3)})
    ```
    """
    refs, new_sites = [], []
    for key, value in interventions.items():
        ref = resolve(model, key)
        chain = tuple(value) if isinstance(value, Sequence) else (value,)
        for item in chain:
            if not isinstance(item, AbstractIntervention):
                raise TypeError(
                    f"intervention for {ref.name} must be an intervention; got {item!r}"
                )
        old = _get(model, ref)
        if old.intervention is not None:
            chain = (old.intervention, *chain)
        new = chain[0] if len(chain) == 1 else Chain(chain)
        refs.append(ref)
        new_sites.append(Site(old.name, old.axes, new))
    if len(set(refs)) != len(refs):
        raise ValueError("a site appears twice in one intervene call (e.g. as name and SiteRef)")
    if not refs:
        return model
    _check_selections(model, new_sites)
    return eqx.tree_at(
        lambda m: [_get(m, r) for r in refs], model, new_sites, is_leaf=lambda x: x is None
    )


def _selective(intervention) -> list[AbstractSelectiveIntervention]:
    if isinstance(intervention, Chain):
        return [s for i in intervention.interventions for s in _selective(i)]
    return [intervention] if isinstance(intervention, AbstractSelectiveIntervention) else []


def _check_selections(model: Transformer, new_sites: list[Site]) -> None:
    """Check concrete head and unit indices now, against the sizes of each site's axes: under
    `jit` (where `run` goes) they are traced data and out-of-range ones would select nothing.
    Positions depend on the tokens; they are checked where the site runs eagerly."""
    items = [(site, iv) for site in new_sites for iv in _selective(site.intervention)]
    concrete = lambda x: x is not None and not isinstance(x, jax.core.Tracer)
    shapes = None
    for site, iv in items:
        sizes = {}
        if concrete(iv.head) or concrete(iv.unit):
            if shapes is None:
                bare = clear(model)
                shapes = eqx.filter_eval_shape(
                    lambda t: forward(bare, t)[1].values, jnp.zeros(1, jnp.int32)
                )
            sizes = {
                axis: n
                for axis, n in zip(site.axes, shapes[site.name].shape)
                if axis in ("head", "unit")
            }
        iv.check_selection(site, sizes)


def clear(model: Transformer) -> Transformer:
    """Remove every intervention from `model`."""
    return jax.tree_util.tree_map(
        lambda s: Site(s.name, s.axes) if isinstance(s, Site) else s,
        model,
        is_leaf=lambda x: isinstance(x, Site),
    )
