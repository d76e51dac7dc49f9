"""Sites: the identity points every canonical activation passes through.

A `Site` is a field of the model tree named with TransformerLens's vocabulary, so the string
`"blocks.3.attn.hook_z"` is also the attribute path `model.blocks[3].attn.hook_z`. By default a
site returns its input; `jaxcirc.intervene` swaps in a `Site` that carries an intervention.
"""

from __future__ import annotations

import abc
import dataclasses
import difflib

import equinox as eqx
from jaxtyping import Array

# kind -> (path inside a block, or the global path; axes of one example's activation)
SITE_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "embed": ("hook_embed", ("position", "unit")),
    "pos_embed": ("hook_pos_embed", ("position", "unit")),
    "resid_pre": ("hook_resid_pre", ("position", "unit")),
    "ln1": ("ln1.hook_normalized", ("position", "unit")),
    "q": ("attn.hook_q", ("position", "head", "unit")),
    "k": ("attn.hook_k", ("position", "head", "unit")),
    "v": ("attn.hook_v", ("position", "head", "unit")),
    "attn_scores": ("attn.hook_attn_scores", ("head", "position", "key_position")),
    "pattern": ("attn.hook_pattern", ("head", "position", "key_position")),
    "z": ("attn.hook_z", ("position", "head", "unit")),
    "attn_out": ("hook_attn_out", ("position", "unit")),
    "resid_mid": ("hook_resid_mid", ("position", "unit")),
    "ln2": ("ln2.hook_normalized", ("position", "unit")),
    "mlp_pre": ("mlp.hook_pre", ("position", "unit")),
    "mlp_pre_linear": ("mlp.hook_pre_linear", ("position", "unit")),
    "mlp_post": ("mlp.hook_post", ("position", "unit")),
    "mlp_out": ("hook_mlp_out", ("position", "unit")),
    "resid_post": ("hook_resid_post", ("position", "unit")),
    "ln_final": ("ln_final.hook_normalized", ("position", "unit")),
}
GLOBAL_KINDS = ("embed", "pos_embed", "ln_final")


def site_name(kind: str, layer: int | None = None) -> str:
    """The TransformerLens name of a site, e.g. `site_name("z", 3) == "blocks.3.attn.hook_z"`."""
    path = SITE_KINDS[kind][0]
    return path if kind in GLOBAL_KINDS else f"blocks.{layer}.{path}"


def nearest(word: str, choices) -> str:
    """` (did you mean 'x'?)` for the closest choice, or an empty string."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.4)
    return f" (did you mean {match[0]!r}?)" if match else ""


@dataclasses.dataclass(frozen=True)
class SiteRef:
    """A typed site address: a `kind` from `SITE_KINDS` and a `layer` (`None` for global kinds).

    `SiteRef("z", 3).name == "blocks.3.attn.hook_z"`; `SiteRef.parse` reads such names back.
    """

    kind: str
    layer: int | None = None

    def __post_init__(self):
        if self.kind not in SITE_KINDS:
            raise ValueError(
                f"unknown site kind {self.kind!r}{nearest(self.kind, SITE_KINDS)}; "
                f"kinds: {sorted(SITE_KINDS)}"
            )
        if (self.kind in GLOBAL_KINDS) != (self.layer is None):
            need = "no layer" if self.kind in GLOBAL_KINDS else "a layer"
            raise ValueError(f"site kind {self.kind!r} takes {need}; got layer={self.layer}")

    @property
    def name(self) -> str:
        return site_name(self.kind, self.layer)

    @property
    def axes(self) -> tuple[str, ...]:
        return SITE_KINDS[self.kind][1]

    @classmethod
    def parse(cls, name: str, valid_names=()) -> SiteRef:
        """Read a TransformerLens name such as `"blocks.3.hook_resid_pre"`."""
        for kind, (path, _) in SITE_KINDS.items():
            if kind in GLOBAL_KINDS and name == path:
                return cls(kind)
            prefix, _, rest = name.partition(".")
            layer, _, tail = rest.partition(".")
            if prefix == "blocks" and layer.isdigit() and tail == path:
                return cls(kind, int(layer))
        raise KeyError(f"unknown site {name!r}{nearest(name, valid_names)}")


class AbstractIntervention(eqx.Module):
    """What a `Site` does to the activation passing through it (see `jaxcirc.interventions`)."""

    @abc.abstractmethod
    def __call__(self, x: Array, site: Site) -> Array:
        """Return the new activation for one example's activation `x` at `site`."""

    def check_sizes(self, site: Site, sizes: dict[str, int]) -> None:
        """Raise now for a concrete selection outside `sizes` (`{"position": seq, ...}`, the
        axis sizes of `site`'s activation); the default checks nothing."""


class Site(eqx.Module):
    """An identity point named `name` with the axes `axes`, optionally intervened on.

    **Arguments:**

    - `name`: the TransformerLens name, e.g. `"blocks.0.hook_resid_pre"`.
    - `axes`: the meaning of each axis of one example's activation.
    - `intervention`: an `AbstractIntervention`, or `None` for the identity.
    """

    name: str = eqx.field(static=True)
    axes: tuple[str, ...] = eqx.field(static=True)
    intervention: AbstractIntervention | None = None

    def __call__(self, x: Array) -> Array:
        if len(self.axes) != x.ndim:
            raise ValueError(f"site {self.name} expects axes {self.axes}; got shape {x.shape}")
        return x if self.intervention is None else self.intervention(x, self)


def make_site(kind: str, layer: int | None = None) -> Site:
    return Site(site_name(kind, layer), SITE_KINDS[kind][1])


def record(acts: dict[str, Array], site: Site, x: Array) -> Array:
    """Pass `x` through `site` and store the result under the site's name."""
    x = site(x)
    acts[site.name] = x
    return x
