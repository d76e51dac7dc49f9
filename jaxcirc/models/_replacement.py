"""`Replacement`: which units of one site an abstraction keeps, and the affine mechanism that
stands in for each pruned one (Asiaee 2026, arXiv 2602.24266); and the unit interface of models.

A site's activation is viewed as `[..., n_units, d_unit]`: a site with axes `(..., "unit")` has
its features as units (`d_unit = 1`: MLP neurons, `"hidden.{l}"`, `hook_post`), a site with axes
`(..., "head", "unit")` its heads (`d_unit = d_head`: `hook_z`). A pruned unit's coordinates
become `offset + mix @ kept_coordinates`: a constant (a hard intervention `do(a_j = c_j)`) when
its rows of `mix` are zero, a fold (an affine soft intervention on kept neighbours of the same
site) otherwise. Kept units pass through unchanged.

**The unit interface.** What unit methods (`jaxcirc.methods.prune_model`, `abstraction_iia`)
ask of a model family, dispatched on the model class (`functools.singledispatch`):
`site_table(model)`, `unit_sites(model)`, `unit_site(model, site)`, `check_inputs(model, inputs)`,
`run_from(model, site, value, x)`, `default_curvature(model)`, and `narrow(model, replacements)`
(`jaxcirc.models._narrow`). `Transformer` registers its implementations here,
`MLPClassifier` registers its methods. The rest is shared: every model has `run(x) ->
(logits, Activations)` and names its sites by their attribute paths (`get_site`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from ._site import AbstractIntervention, Site, SiteRef, nearest
from ._transformer import Transformer, forward

KEPT, CONSTANT, FOLD = 0, 1, 2
KINDS = ("kept", "constant", "fold")
_POS_HEAD = ("position", "head")


class Replacement(eqx.Module):
    """The abstraction of one site.

    - `site`: the site's name (`"blocks.0.mlp.hook_post"`, `"blocks.1.attn.hook_z"`, or a
      model's own name such as `"hidden.1"` for the `MLPClassifier`).
    - `keep`: `[n_units]` booleans.
    - `offset`: `[n_units, d_unit]`, the constant `c_j` (or the fold's intercept `β_j`).
    - `mix`: `[n_units * d_unit, n_units * d_unit]`, coordinate `(j, e)` of a pruned unit is
      `offset[j, e] + Σ mix[j·d + e, k·d + f] · a[k, f]`; only rows of pruned units and columns
      of kept units may be non-zero.
    - `kind`: `[n_units]` codes `KEPT` / `CONSTANT` / `FOLD` (for reports).
    """

    site: str = eqx.field(static=True)
    keep: Bool[Array, " n_units"]
    offset: Float[Array, "n_units d_unit"]
    mix: Float[Array, "coords coords"]
    kind: Int[Array, " n_units"]

    def __check_init__(self):
        u, d = self.offset.shape
        if self.keep.shape != (u,) or self.kind.shape != (u,):
            raise ValueError(
                f"keep and kind must have shape [n_units={u}]; got {self.keep.shape}, "
                f"{self.kind.shape}"
            )
        if self.mix.shape != (u * d, u * d):
            raise ValueError(
                f"mix must have shape [n_units*d_unit, n_units*d_unit] = {(u * d, u * d)}; "
                f"got {self.mix.shape}"
            )

    @property
    def n_units(self) -> int:
        return self.offset.shape[0]

    @property
    def d_unit(self) -> int:
        return self.offset.shape[1]

    @property
    def n_kept(self) -> int:
        return int(np.asarray(self.keep).sum())

    @classmethod
    def identity(cls, site: str, n_units: int, d_unit: int = 1) -> Replacement:
        """Keep every unit."""
        return cls(
            site,
            jnp.ones(n_units, bool),
            jnp.zeros((n_units, d_unit)),
            jnp.zeros((n_units * d_unit, n_units * d_unit)),
            jnp.zeros(n_units, jnp.int32),
        )

    @classmethod
    def constants(cls, site: str, keep, constant) -> Replacement:
        """Pruned units (`~keep`) replaced by `constant` `[n_units]` or `[n_units, d_unit]`."""
        keep = jnp.asarray(keep, bool)
        c = jnp.asarray(constant, jnp.float32)
        c = c[:, None] if c.ndim == 1 else c
        u, d = c.shape
        offset = jnp.where(keep[:, None], 0.0, c)
        kind = jnp.where(keep, KEPT, CONSTANT).astype(jnp.int32)
        return cls(site, keep, offset, jnp.zeros((u * d, u * d)), kind)

    def apply(self, a: Float[Array, "... n_units d_unit"]) -> Float[Array, "... n_units d_unit"]:
        """The site's activation with pruned units replaced (kept units unchanged)."""
        u, d = self.offset.shape
        if a.shape[-2:] != (u, d):
            raise ValueError(
                f"activation has unit axes {a.shape[-2:]}; this replacement of {self.site!r} "
                f"expects [n_units, d_unit] = {(u, d)}"
            )
        flat = a.reshape(*a.shape[:-2], u * d)
        coord_keep = jnp.repeat(self.keep, d)
        replaced = self.offset.reshape(-1) + jnp.where(coord_keep, flat, 0.0) @ self.mix.T
        out = jnp.where(coord_keep, flat, replaced)
        return out.reshape(a.shape)

    def summary(self) -> dict:
        kind = np.asarray(self.kind)
        return {name: int((kind == i).sum()) for i, name in enumerate(KINDS)}


# ---------------------------------------------------------------------------------------------
# The unit view of a site's activation
# ---------------------------------------------------------------------------------------------


def has_units(axes: tuple[str, ...]) -> bool:
    """Whether a site with these axes has units: features or heads, per position or not."""
    return axes[-1:] == ("unit",) and axes[:-1] in ((), ("position",), ("head",), _POS_HEAD)


def heads_as_units(axes: tuple[str, ...]) -> bool:
    return axes[-2:] == ("head", "unit")


def as_units(a: Array, axes: tuple[str, ...]) -> Float[Array, "... n_units d_unit"]:
    """A site's activation (axes `axes`) viewed as `[..., n_units, d_unit]`."""
    return a if heads_as_units(axes) else a[..., None]


def from_units(a: Float[Array, "... n_units d_unit"], axes: tuple[str, ...]) -> Array:
    """The inverse of `as_units`."""
    return a if heads_as_units(axes) else a[..., 0]


class ReplaceUnits(AbstractIntervention):
    """The intervention that passes a site through `Replacement.apply` (the masked model).

    The replacement is data (arrays), so models masked with different keep sets and constants
    of the same sizes share one compiled program.
    """

    replacement: Replacement

    def __call__(self, x: Array, site: Site) -> Array:
        out = self.replacement.apply(as_units(x, site.axes))
        return from_units(out, site.axes).astype(x.dtype)


class _Set(AbstractIntervention):
    """Set the whole activation to `value` (shape-checked against the site)."""

    value: Array

    def __call__(self, x, site):
        if self.value.shape != x.shape:
            raise ValueError(
                f"activation for site {site.name} has shape {self.value.shape}; the site needs "
                f"{x.shape} (axes {site.axes}, one example)"
            )
        return self.value.astype(x.dtype)


# ---------------------------------------------------------------------------------------------
# Sites by name: a site's name is its attribute path in the model tree
# ---------------------------------------------------------------------------------------------


def get_site(model: eqx.Module, name: str) -> Site:
    """The `Site` at the attribute path `name` (`"blocks.1.attn.hook_z"`, `"hidden.0"`)."""
    node = model
    for part in name.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    if not isinstance(node, Site):
        raise AttributeError(f"{name!r} is not a site of this {type(model).__name__}")
    return node


def with_interventions(
    model: eqx.Module, interventions: Mapping[str, AbstractIntervention | None]
) -> eqx.Module:
    """A copy of `model` whose sites named in `interventions` carry those interventions in
    place of their own (`None`: none); `model` is unchanged."""
    names = list(interventions)
    if not names:
        return model
    old = [get_site(model, name) for name in names]
    new = [Site(s.name, s.axes, interventions[name]) for name, s in zip(names, old)]
    return eqx.tree_at(
        lambda m: [get_site(m, n) for n in names], model, new, is_leaf=lambda x: x is None
    )


# ---------------------------------------------------------------------------------------------
# The unit interface, dispatched on the model class
# ---------------------------------------------------------------------------------------------


class UnitSite(NamedTuple):
    """A site with units: its name, its axes and `(n_units, d_unit)` of one example."""

    name: str
    axes: tuple[str, ...]
    n_units: int
    d_unit: int


def _unsupported(model) -> TypeError:
    return TypeError(
        "sites and units are defined for jaxcirc.Transformer and jaxcirc.models.MLPClassifier; "
        f"got {type(model).__name__}"
    )


@functools.singledispatch
def site_table(model) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """`{name: (axes, shape of one example)}` of every site of `model`, in computation order
    (a transformer's at one position)."""
    raise _unsupported(model)


@functools.singledispatch
def unit_sites(model) -> tuple[str, ...]:
    """The sites of `model` that have units, in computation order."""
    raise _unsupported(model)


@functools.singledispatch
def unit_site(model, site: str) -> UnitSite:
    """`site` of `model` checked to exist and have units; a `ValueError` naming the nearest
    valid site otherwise."""
    raise _unsupported(model)


def unit_shape(model, site: str) -> tuple[int, int]:
    """`(n_units, d_unit)` of `site`: `(width, 1)` for features (MLP neurons, `[position,
    unit]` sites), `(n_heads, d_head)` for `[position, head, unit]` sites such as `hook_z`."""
    s = unit_site(model, site)
    return s.n_units, s.d_unit


@functools.singledispatch
def check_inputs(model, inputs: ArrayLike) -> Array:
    """A batch of inputs `[n, ...]` for `model`, checked (eagerly where concrete)."""
    raise _unsupported(model)


@functools.singledispatch
def run_from(model, site: str, value: Array, x: ArrayLike) -> Array:
    """The logits of `model` on one input `x` with the activation of `site` set to `value`
    (one example, the site's own axes)."""
    raise _unsupported(model)


@functools.singledispatch
def default_curvature(model) -> str:
    """The curvature `jaxcirc.methods.prune_model` uses unless told: the exact Gauss–Newton
    diagonal (`"ggn"`) costs one backward pass per logit of an example, so models with many
    logits per example take its Monte-Carlo estimate (`"fisher"`)."""
    raise _unsupported(model)


# ---------------------------------------------------------------------------------------------
# Transformer
# ---------------------------------------------------------------------------------------------

_SITE_TABLES: dict = {}


@site_table.register
def _(model: Transformer) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """Cached per config (a config fixes every site's shape; `narrow` records its widths)."""
    table = _SITE_TABLES.get(model.cfg)
    if table is None:
        order: list[tuple[str, tuple[int, ...]]] = []

        def trace(m):  # a plain dict keeps computation order while tracing
            order.extend(
                (k, v.shape) for k, v in forward(m, jnp.zeros(1, jnp.int32))[1].values.items()
            )

        bare = jax.tree_util.tree_map(  # interventions sized for other inputs must not run here
            lambda s: Site(s.name, s.axes) if isinstance(s, Site) else s,
            model,
            is_leaf=lambda x: isinstance(x, Site),
        )
        eqx.filter_eval_shape(trace, bare)
        table = {name: (SiteRef.parse(name).axes, shape) for name, shape in order}
        _SITE_TABLES[model.cfg] = table
    return table


@unit_sites.register
def _(model: Transformer) -> tuple[str, ...]:
    return tuple(name for name, (axes, _) in site_table(model).items() if has_units(axes))


@unit_site.register
def _(model: Transformer, site: str | SiteRef) -> UnitSite:
    name = site.name if isinstance(site, SiteRef) else site
    table = site_table(model)
    if not isinstance(name, str) or name not in table:
        raise ValueError(
            f"this {model.cfg.family} model has no site {name!r}{nearest(name, table)}; "
            f"see jaxcirc.sites(model)"
        )
    axes, shape = table[name]
    if not has_units(axes):
        raise ValueError(
            f"site {name!r} has axes {axes}; units need a site with axes "
            f"('position', 'unit') or ('position', 'head', 'unit') "
            f"(e.g. 'blocks.0.mlp.hook_post', 'blocks.0.attn.hook_z')"
        )
    n_units, d_unit = (shape[-2], shape[-1]) if heads_as_units(axes) else (shape[-1], 1)
    return UnitSite(name, axes, n_units, d_unit)


@check_inputs.register
def _(model: Transformer, inputs: ArrayLike) -> Array:
    if jnp.ndim(inputs) != 2:
        raise ValueError(
            f"transformer inputs must be tokens [n, seq]; got shape {jnp.shape(inputs)}"
        )
    return model.check_tokens(inputs, name="inputs", ndim=2)  # ids named, before any cast


@run_from.register
def _(model: Transformer, site: str, value: Array, x: ArrayLike) -> Array:
    return forward(with_interventions(model, {site: _Set(value)}), jnp.asarray(x))[0]


@default_curvature.register
def _(model: Transformer) -> str:
    return "fisher"  # positions × vocabulary logits: the exact GGN is slow
