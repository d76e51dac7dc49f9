"""The SAE splice: a site's activation read as `decode(f) + ε`, its features and error as data.

At a spliced site the activation `x` is decomposed into the code `f = encode(x)` and the error
`ε = x − decode(f)` (Marks et al. 2025, "Sparse feature circuits", arXiv 2403.19647). Edits
of `f` and `ε` are arrays: `f' = keep·f + (1 − keep)·value + add`, and the same for `ε`. The
site returns `x + (f' − f) W_dec + (ε' − ε)`, which is `x` itself, bit for bit, when nothing
is edited (`add = 0` included), so a spliced model runs the clean forward and the gradient
with respect to `add` is the gradient with respect to the features (error) there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from ..interventions import intervene
from ..models._replacement import site_table
from ..models._site import AbstractIntervention, Site
from ._sae import SAE


def _array(x):
    return None if x is None else jnp.asarray(x)


class Splice(AbstractIntervention):
    """Decompose the site's activation with `sae` and edit its features and error.

    **Arguments** (arrays broadcastable to one example's `[position, d_sae]` for the
    features, `[position, d_in]` for the error; `None` leaves that part alone):

    - `feature_keep`, `feature_value`: `f' = keep·f + (1 − keep)·value` (`value` defaults to
      zero: `feature_keep=0` zero-ablates).
    - `feature_add`: added to `f'`; its gradient is the gradient of a metric with respect to
      the features.
    - `error_keep`, `error_value`, `error_add`: the same for the error `ε`.

    A site with more than one unit axis (`attn.hook_z`: position, head, unit) is flattened
    after the position, as SAELens's `hook_z` SAEs read it.
    """

    sae: SAE
    feature_keep: Array | None = eqx.field(default=None, converter=_array)
    feature_value: Array | None = eqx.field(default=None, converter=_array)
    feature_add: Array | None = eqx.field(default=None, converter=_array)
    error_keep: Array | None = eqx.field(default=None, converter=_array)
    error_value: Array | None = eqx.field(default=None, converter=_array)
    error_add: Array | None = eqx.field(default=None, converter=_array)

    def __check_init__(self):
        if not isinstance(self.sae, SAE):
            raise TypeError(f"Splice needs an SAE (jaxcirc.sae.SAE); got {type(self.sae).__name__}")

    def check_sizes(self, site: Site, sizes: dict[str, int]) -> None:
        self._check_site(site)
        seq = sizes.get("position")
        if seq is not None:
            self._check_edits(seq)

    def _check_site(self, site: Site) -> None:
        if self.sae.site and self.sae.site != site.name:
            raise ValueError(
                f"this SAE reads site {self.sae.site!r}; it was spliced at {site.name!r}. "
                f"Splice it at its own site (jaxcirc.sae.splice does), or give it site="
                f"{site.name!r} if that is what it was trained on"
            )
        if site.axes[0] != "position" or "head" in site.axes[2:] or len(site.axes) > 3:
            raise ValueError(
                f"an SAE splices a per-position activation; site {site.name} has axes {site.axes}"
            )

    def _check_edits(self, seq: int) -> None:
        parts = {
            "feature_keep": (self.feature_keep, self.sae.d_sae),
            "feature_value": (self.feature_value, self.sae.d_sae),
            "feature_add": (self.feature_add, self.sae.d_sae),
            "error_keep": (self.error_keep, self.sae.d_in),
            "error_value": (self.error_value, self.sae.d_in),
            "error_add": (self.error_add, self.sae.d_in),
        }
        for name, (value, width) in parts.items():
            if value is None:
                continue
            try:
                ok = jnp.broadcast_shapes(value.shape, (seq, width)) == (seq, width)
            except ValueError:
                ok = False
            if not ok:
                where = f" at {self.sae.site}" if self.sae.site else ""
                raise ValueError(
                    f"Splice{where}: {name} has shape {tuple(value.shape)}; it must broadcast "
                    f"to one example's [position={seq}, {width}] (use jax.vmap for a batch)"
                )

    def __call__(self, x: Array, site: Site) -> Array:
        self._check_site(site)
        flat = x.reshape(x.shape[0], -1)
        self.sae.check_width(flat)
        self._check_edits(x.shape[0])
        sae = self.sae
        delta = jnp.zeros_like(flat)
        if any(v is not None for v in (self.feature_keep, self.feature_value, self.feature_add)):
            f = sae.encode(flat)
            df = jnp.zeros_like(f)
            if self.feature_keep is not None or self.feature_value is not None:
                keep = 1.0 if self.feature_keep is None else self.feature_keep
                value = 0.0 if self.feature_value is None else self.feature_value
                df = df + (1.0 - keep) * (value - f)
            if self.feature_add is not None:
                df = df + self.feature_add
            delta = delta + (df @ sae.W_dec).astype(x.dtype)
        if self.error_keep is not None or self.error_value is not None:
            e = flat - sae(flat)
            keep = 1.0 if self.error_keep is None else self.error_keep
            value = 0.0 if self.error_value is None else self.error_value
            delta = delta + ((1.0 - keep) * (value - e)).astype(x.dtype)
        if self.error_add is not None:
            delta = delta + self.error_add.astype(x.dtype)
        return (flat + delta).reshape(x.shape)


def splice(model, saes: SAE | Sequence[SAE] | Mapping[str, Splice], **edits):
    """`model` with each SAE spliced in at its own `site` (its features and error as data).

    `saes` is one SAE, a sequence of them (each with its `site`), or a mapping from site name
    to a `Splice` (to give each site its own edits). `edits` (`feature_keep=…`, …) apply to
    every SAE of a sequence. Without edits each spliced site returns its input bit for bit, so
    the spliced model computes what `model` computes (to float32 rounding: XLA compiles it as
    another program and may order its sums differently).
    """
    if isinstance(saes, Mapping):
        if edits:
            raise TypeError("give the edits inside each Splice of the mapping, not as keywords")
        return intervene(model, dict(saes))
    if isinstance(saes, SAE):
        saes = (saes,)
    table = {}
    for sae in saes:
        if not isinstance(sae, SAE):
            raise TypeError(f"splice takes SAEs; got {type(sae).__name__}")
        if not sae.site:
            raise ValueError(
                "this SAE has no site: give it one (eqx.tree_at or the site= argument when "
                "making or loading it), e.g. 'blocks.3.hook_resid_post'"
            )
        if sae.site in table:
            raise ValueError(f"two SAEs read site {sae.site!r}; splice one per site")
        table[sae.site] = Splice(sae, **edits)
    spliced = intervene(model, table)  # unknown sites fail here, naming the nearest
    shapes = site_table(model)
    for name, item in table.items():
        axes, shape = shapes[name]
        width = math.prod(shape[1:])
        if width != item.sae.d_in:
            raise ValueError(
                f"{type(item.sae).__name__} has d_in={item.sae.d_in}; site {name} (axes "
                f"{axes}) has width {width} per position: this SAE was made for another site "
                f"or model"
            )
    return spliced
