"""The interventions: values that replace a site's activation, optionally on a selection.

Every intervention computes a target `t` for one example's activation `x`; a selection
(`position`, `head`, `unit` indices, or a `mask` broadcastable to `x`) gives a weight `w`
and the site returns `x + w · (t − x)`. Without a selection `w = 1` (the whole site).
Indices and masks are arrays, so a sweep over them compiles once.
"""

from __future__ import annotations

import abc
import functools
import reprlib
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._checks import check_index, is_traced
from ..models._site import AbstractIntervention, Site

_Index = int | ArrayLike | None
_INT32 = np.iinfo(np.int32)


def _as_index(value, axis: str) -> Array | None:
    """`value` (an int, a list, NumPy or JAX integers) as a `jnp.int32` array, so a new index
    is new data, not a new program; tracers pass through. Raises `TypeError` for non-integers
    and `ValueError` for a value int32 cannot hold (it would wrap around)."""
    if value is None:
        return None
    if isinstance(value, jax.core.Tracer):
        if not jnp.issubdtype(value.dtype, jnp.integer):
            raise TypeError(f"{axis} index must be integers; got a traced {value.dtype} array")
        return value
    if isinstance(value, jax.Array) and value.dtype == jnp.int32:
        return value
    concrete = np.asarray(value)
    if concrete.dtype == object and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in concrete.flat
    ):  # Python ints beyond int64
        ints = [int(v) for v in concrete.flat]
        bad = np.asarray([v for v in ints if not _INT32.min <= v <= _INT32.max], object)
    elif np.issubdtype(concrete.dtype, np.integer):
        bad = concrete[(concrete < _INT32.min) | (concrete > _INT32.max)]
    else:
        raise TypeError(
            f"{axis} index must be integers; got {reprlib.repr(value)} of dtype {concrete.dtype}"
        )
    if bad.size:
        raise ValueError(
            f"{axis} index {int(bad.flat[0])} does not fit in int32 ({_INT32.min}..{_INT32.max})"
        )
    with jax.ensure_compile_time_eval():  # concrete even under jit (checkable); no compile
        return jax.device_put(np.asarray(concrete, np.int32))


def _as_array(value) -> Array | None:
    """A number, list or NumPy array as a JAX array (data, not a static leaf, so a new value
    is not a new program); JAX arrays and tracers pass."""
    if value is None or isinstance(value, (jax.Array, jax.core.Tracer)):
        return value
    with jax.ensure_compile_time_eval():
        return jax.device_put(np.asarray(value))


def _check_range(index, size: int, axis: str, site: Site) -> None:
    """Raise if `index` lies outside `-size..size-1`: concrete indices now, traced ones when
    the program runs (never a clamp, never a no-op)."""
    check_index(
        index, size, axis, context=f" for site {site.name} (its {axis} axis has size {size})"
    )


def _one_hot(index, size: int, axis: str, site: Site) -> Array:
    index = jnp.atleast_1d(jnp.asarray(index))
    if not jnp.issubdtype(index.dtype, jnp.integer):
        raise TypeError(f"{axis} index for site {site.name} must be integers; got {index.dtype}")
    _check_range(index, size, axis, site)
    index = jnp.where(index < 0, index + size, index)
    return (jnp.arange(size)[:, None] == index[None, :]).any(-1)


class AbstractSelectiveIntervention(AbstractIntervention):
    """An intervention with an optional selection; subclasses define `target(x, site)`.

    `position`, `head`, `unit` become `int32` arrays and `mask` a JAX array on construction,
    so `Patch(v, head=h)` for every `h` runs one compiled program.
    """

    position: _Index = eqx.field(
        default=None, kw_only=True, converter=functools.partial(_as_index, axis="position")
    )
    head: _Index = eqx.field(
        default=None, kw_only=True, converter=functools.partial(_as_index, axis="head")
    )
    unit: _Index = eqx.field(
        default=None, kw_only=True, converter=functools.partial(_as_index, axis="unit")
    )
    mask: ArrayLike | None = eqx.field(default=None, kw_only=True, converter=_as_array)

    @abc.abstractmethod
    def target(self, x: Array, site: Site) -> Array:
        """The replacement for the whole activation `x`."""

    def check_selection(self, site: Site, sizes: dict[str, int]) -> None:
        """Raise now for an axis `site` lacks, or a concrete index outside `sizes[axis]`
        (traced indices, and axes missing from `sizes`, are checked when the site runs)."""
        for axis, index in (("position", self.position), ("head", self.head), ("unit", self.unit)):
            if index is None:
                continue
            if axis not in site.axes:
                raise ValueError(
                    f"site {site.name} has axes {site.axes}; it cannot select by {axis!r} "
                    f"(choices: {[a for a in ('position', 'head', 'unit') if a in site.axes]})"
                )
            if axis in sizes and not is_traced(index):
                _check_range(index, sizes[axis], axis, site)

    def check_sizes(self, site: Site, sizes: dict[str, int]) -> None:
        self.check_selection(site, sizes)

    def weight(self, x: Array, site: Site) -> Array | None:
        """The weight `w` broadcastable to `x`, or `None` for the whole site."""
        w = None
        self.check_selection(site, {})
        for axis, index in (("position", self.position), ("head", self.head), ("unit", self.unit)):
            if index is None:
                continue
            i = site.axes.index(axis)
            shape = [1] * x.ndim
            shape[i] = x.shape[i]
            sel = _one_hot(index, x.shape[i], axis, site).reshape(shape)
            w = sel if w is None else w & sel
        if self.mask is not None:
            mask = jnp.asarray(self.mask)
            try:
                fits = jnp.broadcast_shapes(mask.shape, x.shape) == x.shape
            except ValueError:
                fits = False
            if not fits:
                raise ValueError(
                    f"mask of shape {mask.shape} does not broadcast to site {site.name}'s "
                    f"activation of shape {x.shape} (axes {site.axes}; one example: the mask "
                    f"may not add axes, e.g. a batch; use jax.vmap)"
                )
            w = mask if w is None else w * mask
        return w

    def __call__(self, x: Array, site: Site) -> Array:
        t = jnp.asarray(self.target(x, site), x.dtype)
        t = jnp.broadcast_to(t, x.shape)
        w = self.weight(x, site)
        return t if w is None else (x + jnp.asarray(w, x.dtype) * (t - x)).astype(x.dtype)


def _check_broadcast(what: str, value: Array, x: Array, site: Site, exact: bool = False):
    ok = value.shape == x.shape
    if not exact and not ok:
        try:
            ok = jnp.broadcast_shapes(value.shape, x.shape) == x.shape
        except ValueError:
            ok = False
    if not ok:
        rule = "must equal" if exact else "must broadcast to"
        raise ValueError(
            f"{what} has shape {value.shape}; it {rule} site {site.name}'s activation shape "
            f"{x.shape} (axes {site.axes}, one example: use jax.vmap for a batch)"
        )


class Patch(AbstractSelectiveIntervention):
    """Replace the activation by `value` (activation patching; Meng et al. 2022)."""

    value: Float[Array, ...] = eqx.field(converter=_as_array)

    def target(self, x, site):
        _check_broadcast("Patch value", jnp.asarray(self.value), x, site, exact=True)
        return self.value


class Zero(AbstractSelectiveIntervention):
    """Replace the activation by zero (zero ablation)."""

    def target(self, x, site):
        return jnp.zeros_like(x)


class Mean(AbstractSelectiveIntervention):
    """Replace the activation by `value`, broadcast over the axes it lacks (mean ablation)."""

    value: Float[Array, ...] = eqx.field(converter=_as_array)

    def target(self, x, site):
        _check_broadcast("Mean value", jnp.asarray(self.value), x, site)
        return self.value


class Add(AbstractSelectiveIntervention):
    """Add `direction` to the activation (activation steering; Turner et al. 2023)."""

    direction: Float[Array, ...] = eqx.field(converter=_as_array)

    def target(self, x, site):
        _check_broadcast("Add direction", jnp.asarray(self.direction), x, site)
        return x + self.direction


class Scale(AbstractSelectiveIntervention):
    """Multiply the activation by `factor`."""

    factor: Float[ArrayLike, ...] = eqx.field(converter=_as_array)

    def target(self, x, site):
        _check_broadcast("Scale factor", jnp.asarray(self.factor), x, site)
        return x * self.factor


class Noise(AbstractSelectiveIntervention):
    """Add Gaussian noise of standard deviation `std` drawn from `key` (causal tracing).

    On a site with a `"position"` axis, position `p` draws from `jax.random.fold_in(key, p)`,
    so a prompt's noise does not depend on how far its batch is padded.
    """

    std: Float[ArrayLike, ...] = eqx.field(converter=_as_array)
    key: PRNGKeyArray

    def target(self, x, site):
        if "position" not in site.axes:
            return x + self.std * jax.random.normal(self.key, x.shape, jnp.float32)
        axis = site.axes.index("position")
        shape = x.shape[:axis] + x.shape[axis + 1 :]
        draw = lambda p: jax.random.normal(jax.random.fold_in(self.key, p), shape, jnp.float32)
        noise = jax.vmap(draw, out_axes=axis)(jnp.arange(x.shape[axis]))
        return x + self.std * noise


class Subspace(AbstractSelectiveIntervention):
    """Replace only the component of the last axis in the span of `basis`'s rows by `value`'s.

    `basis: [k, n]` need not be orthonormal (the orthogonal projector onto its row span is
    used); `value` broadcasts to the activation (Geiger et al. 2023, interchange on a subspace).
    """

    basis: Float[Array, "k n"] = eqx.field(converter=_as_array)
    value: Float[Array, ...] = eqx.field(converter=_as_array)

    def target(self, x, site):
        basis = jnp.asarray(self.basis, jnp.float32)
        if basis.ndim != 2 or basis.shape[1] != x.shape[-1]:
            raise ValueError(
                f"Subspace basis has shape {basis.shape}; site {site.name} needs [k, {x.shape[-1]}]"
            )
        _check_broadcast("Subspace value", jnp.asarray(self.value), x, site)
        projector = jnp.linalg.pinv(basis) @ basis
        return x + (self.value - x) @ projector


class Function(AbstractSelectiveIntervention):
    """Replace the activation by `fn(x)`; `fn` is held static (hashable callables recompile)."""

    fn: Callable[[Array], Array] = eqx.field(static=True)

    def target(self, x, site):
        return self.fn(x)


class Chain(AbstractIntervention):
    """Apply interventions in order: what `intervene` builds when a site is intervened twice."""

    interventions: tuple[AbstractIntervention, ...]

    def __call__(self, x, site):
        for intervention in self.interventions:
            x = intervention(x, site)
        return x

    def check_sizes(self, site: Site, sizes: dict[str, int]) -> None:
        for intervention in self.interventions:
            intervention.check_sizes(site, sizes)
