"""`MLPClassifier`: a ReLU MLP on one example, with a `Site` after each hidden layer.

The model of the pruning reproduction (Asiaee 2026, arXiv 2602.24266): `jaxcirc.zoo.digits_mlp()`
is one, trained on scikit-learn's digits. Hidden layer `l` is the site `"hidden.{l}"` (axes
`("unit",)`, after the ReLU), so `jaxcirc.intervene`, `model.run(x)[1]["hidden.1"]` and the
unit methods (`jaxcirc.methods.prune_model`) address it like a transformer's sites.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._replacement import (
    ReplaceUnits,
    UnitSite,
    check_inputs,
    default_curvature,
    run_from,
    site_table,
    unit_site,
    unit_sites,
)
from ._site import Site, nearest
from ._transformer import Activations


class MLPClassifier(eqx.Module):
    """A ReLU MLP on one example: `model(x) -> logits`.

    - `weights[i]`: `[out, in]`, `biases[i]`: `[out]`, one pair per layer; hidden layer `l`
      is `relu(weights[l] @ a + biases[l])`, passed through the site `hidden[l]`
      (`"hidden.{l}"`).
    - `replacements` (argument): `None`, or one entry per hidden layer, `None` or a
      `Replacement` that rewrites that layer (the masked model of a pruning abstraction,
      `jaxcirc.methods.replace`): it becomes a `ReplaceUnits` intervention at the site.

    Batches: `jax.vmap(model)(x)`. A compiled abstraction (`jaxcirc.models.narrow`) is again an
    `MLPClassifier`, with narrower hidden layers.
    """

    weights: tuple[Float[Array, "out in"], ...]
    biases: tuple[Float[Array, " out"], ...]
    hidden: tuple[Site, ...]

    def __init__(self, weights, biases, replacements=None):
        self.weights = tuple(jnp.asarray(w, jnp.float32) for w in weights)
        self.biases = tuple(jnp.asarray(b, jnp.float32) for b in biases)
        n_hidden = max(0, len(self.weights) - 1)
        reps = (None,) * n_hidden if replacements is None else tuple(replacements)
        self.hidden = tuple(
            Site(f"hidden.{layer}", ("unit",), None if r is None else ReplaceUnits(r))
            for layer, r in enumerate(reps)
        )

    def __check_init__(self):
        if len(self.weights) < 2 or len(self.biases) != len(self.weights):
            raise ValueError(
                f"an MLPClassifier needs >= 2 layers with one bias each; got "
                f"{len(self.weights)} weights and {len(self.biases)} biases"
            )
        if len(self.hidden) != len(self.weights) - 1:
            raise ValueError(
                f"replacements must have one entry per hidden layer ({len(self.weights) - 1}); "
                f"got {len(self.hidden)}"
            )
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if w.ndim != 2 or b.shape != w.shape[:1]:
                raise ValueError(f"layer {i}: weight {w.shape} and bias {b.shape} do not match")
            if i and w.shape[1] != self.weights[i - 1].shape[0]:
                raise ValueError(
                    f"layer {i} reads {w.shape[1]} inputs but layer {i - 1} has "
                    f"{self.weights[i - 1].shape[0]} outputs"
                )
        for site, r in zip(self.hidden, self.replacements):
            if r is not None and getattr(r, "site", site.name) != site.name:
                raise ValueError(f"the replacement for site {site.name!r} is for {r.site!r}")

    @property
    def widths(self) -> tuple[int, ...]:
        """Input size, each hidden layer's width, number of classes."""
        return (self.weights[0].shape[1], *(w.shape[0] for w in self.weights))

    @property
    def sites(self) -> tuple[str, ...]:
        """The hidden layers' names: `("hidden.0", "hidden.1", ...)`."""
        return tuple(site.name for site in self.hidden)

    @property
    def replacements(self) -> tuple:
        """The `Replacement` at each hidden site (`None` where it carries no `ReplaceUnits`)."""
        return tuple(
            s.intervention.replacement if isinstance(s.intervention, ReplaceUnits) else None
            for s in self.hidden
        )

    @property
    def n_params(self) -> int:
        return sum(w.size + b.size for w, b in zip(self.weights, self.biases))

    def layer_index(self, site: str) -> int:
        """`l` for the site `"hidden.{l}"`; a `ValueError` naming the valid sites otherwise."""
        if site not in self.sites:
            raise ValueError(
                f"unknown site {site!r} of this MLPClassifier{nearest(site, self.sites)}; "
                f"its sites: {list(self.sites)}"
            )
        return self.sites.index(site)

    def _layers(self, a: Array, start: int, acts: dict | None = None) -> Array:
        """Hidden layers `start, start + 1, ...` through their sites, then the readout."""
        for layer in range(start, len(self.hidden)):
            a = self.hidden[layer](jax.nn.relu(self.weights[layer] @ a + self.biases[layer]))
            if acts is not None:
                acts[self.hidden[layer].name] = a
        return self.weights[-1] @ a + self.biases[-1]

    def run(self, x: Float[Array, " n_in"]) -> tuple[Float[Array, " n_classes"], Activations]:
        """The logits and every hidden site's activation (after the site's intervention)."""
        if x.shape != (self.widths[0],):
            raise ValueError(
                f"input must have shape [{self.widths[0]}] (one example; use jax.vmap for a "
                f"batch); got {x.shape}"
            )
        acts: dict = {}
        logits = self._layers(x, 0, acts)
        return logits, Activations(acts)

    def __call__(self, x: Float[Array, " n_in"]) -> Float[Array, " n_classes"]:
        return self.run(x)[0]

    def from_layer(self, a: Float[Array, " n_units"], site: str) -> Float[Array, " n_classes"]:
        """The logits of the rest of the network when hidden layer `site` has the value `a`."""
        layer = self.layer_index(site)
        width = self.weights[layer].shape[0]
        if a.shape != (width,):
            raise ValueError(f"activation of {site!r} must have shape [{width}]; got {a.shape}")
        return self._layers(a, layer + 1)

    # the unit interface (jaxcirc.models._replacement)

    def site_table(self) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
        """Each hidden site: axes `("unit",)`, shape `[width]`."""
        return {site.name: (("unit",), (w,)) for site, w in zip(self.hidden, self.widths[1:])}

    def unit_site(self, site: str) -> UnitSite:
        """Every hidden site has units: its neurons, `d_unit = 1`."""
        return UnitSite(site, ("unit",), self.widths[1 + self.layer_index(site)], 1)

    def check_inputs(self, inputs: ArrayLike) -> Float[Array, "n n_in"]:
        """A batch of inputs as float32 `[n, n_in]`."""
        x = jnp.asarray(inputs, jnp.float32)
        if x.ndim != 2 or x.shape[1] != self.widths[0]:
            raise ValueError(
                f"MLPClassifier inputs must have shape [n, {self.widths[0]}]; got {x.shape}"
            )
        return x

    def run_from(self, site: str, value: Array, x: ArrayLike | None = None) -> Array:
        """`from_layer(value, site)`: the input `x` is not needed."""
        return self.from_layer(value, site)

    def default_curvature(self) -> str:
        """`"ggn"`: one backward pass per class is cheap."""
        return "ggn"


site_table.register(MLPClassifier, MLPClassifier.site_table)
unit_sites.register(MLPClassifier, lambda model: model.sites)
unit_site.register(MLPClassifier, MLPClassifier.unit_site)
check_inputs.register(MLPClassifier, MLPClassifier.check_inputs)
run_from.register(MLPClassifier, MLPClassifier.run_from)
default_curvature.register(MLPClassifier, MLPClassifier.default_curvature)
