"""Units of a model: read a site as `[..., n_units, d_unit]`, run the model from it, mask it
with a `Replacement`, and compile the abstraction into a smaller model (Asiaee 2026, arXiv
2602.24266).

One interface over model families, used by the pruning driver and by `abstraction_iia`; each
family provides it through `jaxcirc.models` (the unit interface of
`jaxcirc.models._replacement`: `unit_sites`, `unit_site`, `check_inputs`, `run_from`, `narrow`):

| model | site | one example's units |
|---|---|---|
| `jaxcirc.models.MLPClassifier` | `"hidden.{l}"` | `[n_units, 1]` (neurons) |
| `Transformer` | `blocks.{l}.mlp.hook_post`, any `[position, unit]` site | `[seq, d_mlp, 1]` |
| `Transformer` | `blocks.{l}.attn.hook_z`, any `[position, head, unit]` | `[seq, heads, d_head]` |

The masked full model (`replace`) keeps the architecture and passes each listed site through
`Replacement.apply` (a `ReplaceUnits` intervention); the compiled abstraction
(`compile_abstraction`, `jaxcirc.models.narrow`) drops the pruned units and folds their
mechanisms into the next layer. For a pruned unit `j` with `a_j = c_j + Σ_{k∈K} M[j, k] a_k`
and a next layer `z = W a + b`:

    z = Σ_{k∈K} (W[:, k] + Σ_{j∉K} W[:, j] M[j, k]) a_k + (b + Σ_{j∉K} W[:, j] c_j).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import equinox as eqx
import jax
from jaxtyping import Array, ArrayLike, Float

from ..interventions._library import Chain
from ..models._narrow import narrow
from ..models._replacement import (
    Replacement,
    ReplaceUnits,
    as_units,
    check_inputs,
    from_units,
    get_site,
    run_from,
    unit_shape,
    unit_site,
    unit_sites,
    with_interventions,
)

__all__ = [
    "unit_activations",
    "unit_shape",
    "unit_sites",
    "downstream",
    "Downstream",
    "replace",
    "ReplaceUnits",
    "compile_abstraction",
]

Model = eqx.Module  # any model family with the unit interface (module docstring)


# ---------------------------------------------------------------------------------------------
# Reading units, running from them
# ---------------------------------------------------------------------------------------------


@eqx.filter_jit
def _units(model: Model, x: Array, site: str, axes: tuple[str, ...]):
    return jax.vmap(lambda one: as_units(model.run(one)[1][site], axes))(x)


def unit_activations(
    model: Model, inputs: ArrayLike, site: str
) -> Float[Array, "n *positions n_units d_unit"]:
    """Activations of `site` on a batch of `inputs`, viewed as `[n, ..., n_units, d_unit]`.

    `MLPClassifier`: inputs `[n, n_in]` → `[n, n_units, 1]`. `Transformer`: tokens `[n, seq]`
    → `[n, seq, n_units, d_unit]` (`hook_z`: heads as units; `[position, unit]` sites:
    features as units with `d_unit = 1`). Compiled once per model structure and site.
    """
    s = unit_site(model, site)
    return _units(model, check_inputs(model, inputs), s.name, s.axes)


class Downstream(eqx.Module):
    """`f(a, x) -> logits`: `model` on one input `x` with the whole activation of `site` set to
    `a` (viewed `[..., n_units, d_unit]`). A pytree of the model's arrays: `a` and `x` are array
    arguments, so `jax.jit`/`vmap` of it compiles once for every value."""

    model: Model
    site: str = eqx.field(static=True)
    axes: tuple[str, ...] = eqx.field(static=True)

    def __call__(self, a: Float[Array, "*positions n_units d_unit"], x: ArrayLike) -> Array:
        return run_from(self.model, self.site, from_units(a, self.axes), x)


def downstream(model: Model, site: str) -> Downstream:
    """`f(a, x) -> logits`: run `model` on one input `x` with `site`'s activation set to `a`.

    `a` is one example's units `[n_units, d_unit]` (`MLPClassifier`, where `x` is unused) or
    `[seq, n_units, d_unit]` (`Transformer`; logits `[seq, d_vocab]`).
    `downstream(model, site)(unit_activations(model, x[None], site)[0], x) == model(x)`.
    """
    s = unit_site(model, site)
    return Downstream(model, s.name, s.axes)


# ---------------------------------------------------------------------------------------------
# Masked full model, compiled abstraction
# ---------------------------------------------------------------------------------------------


def _normalise(model: Model, replacements) -> tuple[Replacement, ...]:
    if isinstance(replacements, Replacement):
        replacements = (replacements,)
    elif isinstance(replacements, Mapping):
        for key, r in replacements.items():
            if isinstance(r, Replacement) and r.site != key:
                raise ValueError(f"replacement under key {key!r} is for site {r.site!r}")
        replacements = tuple(replacements.values())
    elif not isinstance(replacements, Sequence):
        raise TypeError(
            f"replacements must be a Replacement, a sequence or a dict of them; got "
            f"{type(replacements).__name__}"
        )
    out, seen = [], set()
    for r in replacements:
        if not isinstance(r, Replacement):
            raise TypeError(f"expected a jaxcirc.methods.Replacement; got {type(r).__name__}")
        if r.site in seen:
            raise ValueError(f"two replacements for site {r.site!r}; give one per site")
        seen.add(r.site)
        shape = unit_shape(model, r.site)
        if (r.n_units, r.d_unit) != shape:
            raise ValueError(
                f"replacement of {r.site!r} has [n_units, d_unit] = {(r.n_units, r.d_unit)}; "
                f"the site has {shape}"
            )
        out.append(r)
    return tuple(out)


def replace(
    model: Model, replacements: Replacement | Sequence[Replacement] | Mapping[str, Replacement]
) -> Model:
    """The masked full model: `model` with each listed site passed through `Replacement.apply`.

    Same architecture and weights; outputs change only through the replaced units. Each site
    gets a `ReplaceUnits` intervention, after any other intervention it already carries; a
    site that is already replaced is an error (replace the plain model with all replacements).
    """
    new = {}
    for r in _normalise(model, replacements):
        old = get_site(model, r.site).intervention
        if isinstance(old, ReplaceUnits):
            raise ValueError(
                f"site {r.site!r} of this {type(model).__name__} is already replaced; replace "
                f"the plain model with all replacements at once"
            )
        new[r.site] = ReplaceUnits(r) if old is None else Chain((old, ReplaceUnits(r)))
    return with_interventions(model, new)


def compile_abstraction(
    model: Model, replacements: Replacement | Sequence[Replacement] | Mapping[str, Replacement]
) -> Model:
    """The abstraction as a genuinely smaller model: pruned units dropped, constants folded
    into the next layer's bias and folds into its weights (module docstring: the algebra).

    Equals `replace(model, replacements)` on every input (to float rounding), with fewer
    parameters: `jaxcirc.models.narrow(model, replacements)`, a model of the same class.
    """
    return narrow(model, list(_normalise(model, replacements)))
