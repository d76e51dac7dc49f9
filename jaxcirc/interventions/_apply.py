"""`intervene`: substitute interventions at sites, returning a new model; `sites`: list them."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

import equinox as eqx
import jax

from ..models._replacement import get_site, site_table
from ..models._site import SITE_KINDS, AbstractIntervention, Site, SiteRef, nearest
from ..models._transformer import Transformer
from ._library import Chain

SiteKey = str | SiteRef


def sites(model: eqx.Module, kind: str | None = None) -> tuple[SiteRef | str, ...]:
    """The sites of `model` in computation order, all of them or those of one `kind`: a
    transformer's as `SiteRef`s, another model's (`MLPClassifier`: `"hidden.0"`, ...) by name."""
    names = tuple(site_table(model))
    if not isinstance(model, Transformer):
        if kind is not None:
            raise ValueError(
                f"site kinds name transformer sites; this {type(model).__name__} has the sites "
                f"{list(names)}"
            )
        return names
    if kind is not None and kind not in SITE_KINDS:
        raise ValueError(f"unknown site kind {kind!r}{nearest(kind, SITE_KINDS)}")
    refs = tuple(SiteRef.parse(name) for name in names)
    return refs if kind is None else tuple(r for r in refs if r.kind == kind)


def resolve(model: eqx.Module, key: SiteKey) -> SiteRef | str:
    """Turn a name or `SiteRef` into a `SiteRef` (a transformer's) or a name (another
    model's) that exists in `model`, or raise."""
    if not isinstance(model, Transformer):
        names = tuple(site_table(model))
        if key not in names:
            raise ValueError(
                f"this {type(model).__name__} has no site {key!r}{nearest(str(key), names)}; "
                f"its sites: {list(names)}"
            )
        return key
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
    if key.name not in site_table(model):
        present = sorted({r.kind for r in sites(model)})
        raise ValueError(
            f"this {model.cfg.family} model has no site {key.name!r}{nearest(key.kind, present)}; "
            f"its kinds: {present}"
        )
    return key


def _name(ref: SiteRef | str) -> str:
    return ref.name if isinstance(ref, SiteRef) else ref


def intervene(
    model: eqx.Module,
    interventions: Mapping[SiteKey, AbstractIntervention | Sequence[AbstractIntervention]],
) -> eqx.Module:
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
        chain = (
            tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else (value,)
        )
        for item in chain:
            if not isinstance(item, AbstractIntervention):
                hint = _hint(item)
                raise TypeError(
                    f"intervention for {_name(ref)} must be an intervention value; got "
                    f"{item!r}{hint} (choices: {', '.join(_CLASSES)})"
                )
        old = get_site(model, _name(ref))
        if old.intervention is not None:
            chain = (old.intervention, *chain)
        new = chain[0] if len(chain) == 1 else Chain(chain)
        refs.append(ref)
        new_sites.append(Site(old.name, old.axes, new))
    if len(set(map(_name, refs))) != len(refs):
        raise ValueError("a site appears twice in one intervene call (e.g. as name and SiteRef)")
    if not refs:
        return model
    _check_selections(model, new_sites)
    return eqx.tree_at(
        lambda m: [get_site(m, _name(r)) for r in refs],
        model,
        new_sites,
        is_leaf=lambda x: x is None,
    )


_CLASSES = ("Patch", "Zero", "Mean", "Add", "Scale", "Noise", "Subspace", "Function", "Chain")


def _hint(item) -> str:
    """` (did you mean jaxcirc.Zero()?)` for a string naming an intervention class."""
    if isinstance(item, str):
        match = difflib.get_close_matches(item.capitalize(), _CLASSES, n=1, cutoff=0.4)
        if match:
            return f" (did you mean jaxcirc.{match[0]}(...)?)"
    if isinstance(item, type) and issubclass(item, AbstractIntervention):
        return f" (the class, not a value: instantiate it, {item.__name__}(...))"
    return ""


def _check_selections(model: eqx.Module, new_sites: list[Site]) -> None:
    """Check concrete head and unit indices now, against the sizes of each site's axes: under
    `jit` (where `run` goes) they are traced data and out-of-range ones would select nothing.
    Positions depend on the inputs; they are checked where the site runs eagerly."""
    table = site_table(model)
    for site in new_sites:
        axes, shape = table[site.name]
        sizes = {axis: n for axis, n in zip(axes, shape) if axis in ("head", "unit")}
        site.intervention.check_sizes(site, sizes)  # selections; an SAE splice its site


def clear(model: eqx.Module) -> eqx.Module:
    """Remove every intervention from `model`."""
    return jax.tree_util.tree_map(
        lambda s: Site(s.name, s.axes) if isinstance(s, Site) else s,
        model,
        is_leaf=lambda x: isinstance(x, Site),
    )
