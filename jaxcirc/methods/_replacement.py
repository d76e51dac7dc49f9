"""`Replacement`: which units of one site an abstraction keeps, and the affine mechanism that
stands in for each pruned one (Asiaee 2026, arXiv 2602.24266; METHODS.md §1.2).

A site's activation is viewed as `[..., n_units, d_unit]`: MLP neurons (`hook_post`, `d_unit
= 1`), attention heads (`hook_z`, `d_unit = d_head`), or any feature axis. A pruned unit's
coordinates become `offset + mix @ kept_coordinates`: a constant (a hard intervention
`do(a_j = c_j)`) when its rows of `mix` are zero, a fold (an affine soft intervention on kept
neighbours of the same site) otherwise. Kept units pass through unchanged.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

KEPT, CONSTANT, FOLD = 0, 1, 2
KINDS = ("kept", "constant", "fold")


class Replacement(eqx.Module):
    """The abstraction of one site.

    - `site`: the site's name (`"blocks.0.mlp.hook_post"`, `"blocks.1.attn.hook_z"`, or a
      model's own name such as `"hidden.1"` for the zoo MLP classifier).
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
