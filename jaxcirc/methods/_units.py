"""Units of a model: read a site as `[..., n_units, d_unit]`, run the model from it, mask it
with a `Replacement`, and compile the abstraction into a smaller model (Asiaee 2026, arXiv
2602.24266; METHODS.md §1.2).

One interface over model families, used by the pruning driver and by `abstraction_iia`:

| model | site | one example's units |
|---|---|---|
| `jaxcirc.zoo.MLPClassifier` | `"hidden.{l}"` | `[n_units, 1]` (neurons) |
| `Transformer` | `blocks.{l}.mlp.hook_post`, any `[position, unit]` site | `[seq, d_mlp, 1]` |
| `Transformer` | `blocks.{l}.attn.hook_z`, any `[position, head, unit]` | `[seq, heads, d_head]` |

The masked full model (`replace`) keeps the architecture and passes each listed site through
`Replacement.apply`; the compiled abstraction (`compile_abstraction`) drops the pruned units and
folds their mechanisms into the next layer. For a pruned unit `j` with
`a_j = c_j + Σ_{k∈K} M[j, k] a_k` and a next layer `z = W a + b`:

    z = Σ_{k∈K} (W[:, k] + Σ_{j∉K} W[:, j] M[j, k]) a_k + (b + Σ_{j∉K} W[:, j] c_j)

so `W' = (W + W M̃)[:, K]` and `b' = b + W c̃`, where `M̃` is `mix` with rows of kept units and
columns of pruned units zeroed (the entries `Replacement.apply` ignores) and `c̃` is `offset`
zeroed on kept units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ..interventions._apply import intervene
from ..models._site import AbstractIntervention, Site, SiteRef, nearest
from ..models._transformer import Transformer, forward
from ..zoo._digits import MLPClassifier
from ._replacement import Replacement

Model = MLPClassifier | Transformer


# ---------------------------------------------------------------------------------------------
# Sites and their unit shapes
# ---------------------------------------------------------------------------------------------


def _check_model(model) -> None:
    if not isinstance(model, (MLPClassifier, Transformer)):
        raise TypeError(
            f"units are defined for jaxcirc.zoo.MLPClassifier and jaxcirc.Transformer; "
            f"got {type(model).__name__}"
        )


_SITE_TABLES: dict = {}


def _site_table(model: Transformer) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """`{name: (axes, shape of one example at one position)}` in computation order, cached per
    config (a config fixes every site's shape; `jaxcirc.models.narrow` records its widths)."""
    table = _SITE_TABLES.get(model.cfg)
    if table is None:
        order: list[tuple[str, tuple[int, ...]]] = []

        def trace(m):  # a plain dict keeps computation order while tracing
            order.extend(
                (k, v.shape) for k, v in forward(m, jnp.zeros(1, jnp.int32))[1].values.items()
            )

        eqx.filter_eval_shape(trace, model)
        table = {name: (SiteRef.parse(name).axes, shape) for name, shape in order}
        _SITE_TABLES[model.cfg] = table
    return table


def _transformer_site(model: Transformer, site) -> tuple[str, tuple[str, ...], tuple[int, ...]]:
    """`(name, axes, shape at one position)` of `site`, checked to have a trailing unit axis."""
    name = site.name if isinstance(site, SiteRef) else site
    table = _site_table(model)
    if not isinstance(name, str) or name not in table:
        raise ValueError(
            f"this {model.cfg.family} model has no site {name!r}{nearest(name, table)}; "
            f"see jaxcirc.sites(model)"
        )
    axes, shape = table[name]
    if not _has_units(axes):
        raise ValueError(
            f"site {name!r} has axes {axes}; units need a site with axes "
            f"('position', 'unit') or ('position', 'head', 'unit') "
            f"(e.g. 'blocks.0.mlp.hook_post', 'blocks.0.attn.hook_z')"
        )
    return name, axes, shape


def _has_units(axes: tuple[str, ...]) -> bool:
    return axes in (("position", "unit"), ("position", "head", "unit"))


def _head_units(axes: tuple[str, ...]) -> bool:
    return axes[-2:] == ("head", "unit")


def unit_shape(model: Model, site: str) -> tuple[int, int]:
    """`(n_units, d_unit)` of `site`: `(width, 1)` for MLP neurons and `[position, unit]` sites,
    `(n_heads, d_head)` for `[position, head, unit]` sites such as `hook_z`."""
    _check_model(model)
    if isinstance(model, MLPClassifier):
        return model.widths[1 + model.layer_index(site)], 1
    _, axes, shape = _transformer_site(model, site)
    return (shape[-2], shape[-1]) if _head_units(axes) else (shape[-1], 1)


def unit_sites(model: Model) -> tuple[str, ...]:
    """The sites of `model` that have units, in computation order."""
    _check_model(model)
    if isinstance(model, MLPClassifier):
        return model.sites
    return tuple(name for name, (axes, _) in _site_table(model).items() if _has_units(axes))


# ---------------------------------------------------------------------------------------------
# Reading units, running from them
# ---------------------------------------------------------------------------------------------


@eqx.filter_jit
def _mlp_units(model: MLPClassifier, x: Float[Array, "n d"], site: str):
    return jax.vmap(model.hidden)(x)[site][..., None]


@eqx.filter_jit
def _transformer_units(model: Transformer, tokens, site: str, heads: bool):
    a = jax.vmap(lambda t: forward(model, t)[1][site])(tokens)
    return a if heads else a[..., None]


def _check_tokens(model: Transformer, tokens) -> Array:
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"transformer inputs must be tokens [n, seq]; got shape {tokens.shape}")
    if not isinstance(tokens, jax.core.Tracer):
        for row in tokens:  # eager: names a bad id and its position
            model.check_tokens(row)
    return tokens


def unit_activations(
    model: Model, inputs: ArrayLike, site: str
) -> Float[Array, "n *positions n_units d_unit"]:
    """Activations of `site` on a batch of `inputs`, viewed as `[n, ..., n_units, d_unit]`.

    `MLPClassifier`: inputs `[n, n_in]` → `[n, n_units, 1]`. `Transformer`: tokens `[n, seq]`
    → `[n, seq, n_units, d_unit]` (`hook_z`: heads as units; `[position, unit]` sites:
    features as units with `d_unit = 1`). Compiled once per model structure and site.
    """
    _check_model(model)
    if isinstance(model, MLPClassifier):
        model.layer_index(site)
        x = jnp.asarray(inputs, jnp.float32)
        if x.ndim != 2 or x.shape[1] != model.widths[0]:
            raise ValueError(
                f"MLPClassifier inputs must have shape [n, {model.widths[0]}]; got {x.shape}"
            )
        return _mlp_units(model, x, site)
    name, axes, _ = _transformer_site(model, site)
    return _transformer_units(model, _check_tokens(model, inputs), name, _head_units(axes))


class Downstream(eqx.Module):
    """`f(a, x) -> logits`: `model` on one input `x` with the whole activation of `site` set to
    `a` (viewed `[..., n_units, d_unit]`). A pytree of the model's arrays: `a` and `x` are array
    arguments, so `jax.jit`/`vmap` of it compiles once for every value."""

    model: Model
    site: str = eqx.field(static=True)

    def __call__(self, a: Float[Array, "*positions n_units d_unit"], x: ArrayLike) -> Array:
        if isinstance(self.model, MLPClassifier):
            return self.model.from_layer(a[..., 0], self.site)
        ref = SiteRef.parse(self.site)
        value = a if _head_units(ref.axes) else a[..., 0]
        patched = intervene(self.model, {ref: _PatchSite(value)})
        return forward(patched, jnp.asarray(x))[0]


class _PatchSite(AbstractIntervention):
    """Replace the whole activation by `value` (shape-checked against the site)."""

    value: Array

    def __call__(self, x, site):
        if self.value.shape != x.shape:
            raise ValueError(
                f"activation for site {site.name} has shape {self.value.shape} as units; the "
                f"site needs {x.shape} (axes {site.axes}, one example)"
            )
        return self.value.astype(x.dtype)


def downstream(model: Model, site: str) -> Downstream:
    """`f(a, x) -> logits`: run `model` on one input `x` with `site`'s activation set to `a`.

    `a` is one example's units `[n_units, d_unit]` (`MLPClassifier`, where `x` is unused) or
    `[seq, n_units, d_unit]` (`Transformer`; logits `[seq, d_vocab]`).
    `downstream(model, site)(unit_activations(model, x[None], site)[0], x) == model(x)`.
    """
    _check_model(model)
    if isinstance(model, MLPClassifier):
        model.layer_index(site)
        return Downstream(model, site)
    return Downstream(model, _transformer_site(model, site)[0])


# ---------------------------------------------------------------------------------------------
# Masked full model
# ---------------------------------------------------------------------------------------------


class ReplaceUnits(AbstractIntervention):
    """The intervention that passes a Transformer site through `Replacement.apply`.

    The replacement is data (arrays), so models masked with different keep sets and constants
    of the same sizes share one compiled program.
    """

    replacement: Replacement

    def __call__(self, x: Array, site: Site) -> Array:
        heads = _head_units(site.axes)
        view = x if heads else x[..., None]
        return self.replacement.apply(view).reshape(x.shape).astype(x.dtype)


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

    Same architecture and weights; outputs change only through the replaced units.
    `Transformer`: a `ReplaceUnits` intervention at each site (after any it already carries);
    `MLPClassifier`: its `replacements` field.
    """
    _check_model(model)
    reps = _normalise(model, replacements)
    if isinstance(model, Transformer):
        return intervene(model, {SiteRef.parse(r.site): ReplaceUnits(r) for r in reps})
    new = list(model.replacements)
    for r in reps:
        layer = model.layer_index(r.site)
        if new[layer] is not None:
            raise ValueError(f"site {r.site!r} of this MLPClassifier is already replaced")
        new[layer] = r
    return MLPClassifier(model.weights, model.biases, new)


# ---------------------------------------------------------------------------------------------
# Compilation
# ---------------------------------------------------------------------------------------------


def _compile_mlp(model: MLPClassifier, reps: tuple[Replacement, ...]) -> MLPClassifier:
    weights, biases = list(model.weights), list(model.biases)
    replaced = list(model.replacements)
    for r in reps:
        layer = model.layer_index(r.site)
        if replaced[layer] is not None:
            raise ValueError(
                f"site {r.site!r} already carries a replacement in this model; compile the "
                f"plain model with all replacements at once"
            )
        keep = np.asarray(r.keep)
        if not keep.any():
            raise ValueError(f"replacement of {r.site!r} keeps no unit; keep at least one")
        # the algebra in float64, then back to the model's dtype (rounding once, not per op)
        kept, pruned = np.flatnonzero(keep), ~keep
        mix = np.where(pruned[:, None] & keep[None, :], np.asarray(r.mix, np.float64), 0.0)
        offset = np.where(pruned, np.asarray(r.offset, np.float64)[:, 0], 0.0)
        w_next = np.asarray(weights[layer + 1], np.float64)
        dtype = weights[layer + 1].dtype
        weights[layer + 1] = jnp.asarray((w_next + w_next @ mix)[:, kept], dtype)
        biases[layer + 1] = jnp.asarray(np.asarray(biases[layer + 1]) + w_next @ offset, dtype)
        weights[layer], biases[layer] = weights[layer][kept], biases[layer][kept]
    return MLPClassifier(weights, biases, replaced)


def compile_abstraction(
    model: Model, replacements: Replacement | Sequence[Replacement] | Mapping[str, Replacement]
) -> Model:
    """The abstraction as a genuinely smaller model: pruned units dropped, constants folded
    into the next layer's bias and folds into its weights (module docstring: the algebra).

    Equals `replace(model, replacements)` on every input (to float rounding), with fewer
    parameters. `MLPClassifier` → a narrower `MLPClassifier`; `Transformer` →
    `jaxcirc.models.narrow(model, replacements)`.
    """
    _check_model(model)
    reps = _normalise(model, replacements)
    if isinstance(model, MLPClassifier):
        return _compile_mlp(model, reps)
    try:
        from ..models import narrow
    except ImportError:
        raise NotImplementedError(
            "compiling a Transformer abstraction needs jaxcirc.models.narrow, which this "
            "installation lacks; use replace(model, replacements) for the masked full model"
        ) from None
    return narrow(model, list(reps))
