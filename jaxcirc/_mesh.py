"""Data parallelism over a device mesh: the one way every engine splits its prompts.

An engine that takes `mesh=` (a `jax.sharding.Mesh`) splits the prompt batch over the mesh
axis named by `batch_axis=` (default: the mesh's first axis; a tuple of names splits over
their product), keeps the model and the other arguments replicated, and runs one SPMD program
built with `jax.shard_map`. Each device computes the sum of the per-example values of its own
prompts; one `psum` over the batch axes adds them and the result is divided by the batch size.
No device ever holds another device's activations: the only collective is that all-reduce of
the (small) results. Axes of the mesh not named by `batch_axis` hold replicas of the same work.

Every quantity an engine returns must therefore be a mean over prompts, which is how the
chunked engines of `jaxcirc.patching._budget` already work: a metric must declare a
per-example form (`jaxcirc.metrics.is_example_mean`), else the engine refuses the mesh.

**Batches that do not divide the axis size are padded and masked**: device `d` of `n` takes
prompts `d·⌈batch/n⌉ …`, padded with repeats of the last prompt that `valid` marks out of the
sums, so any batch size runs. Within a device, prompts run in chunks of `size` (what the
memory budget allows) under `lax.map`, all in one compiled program.

This is JAX's own SPMD machinery (Xu et al. 2021, "GSPMD"; the `shard_map` of the JAX docs,
"Manual parallelism with shard_map"); nothing here schedules devices itself.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ._checks import nearest_word


def check_mesh(
    mesh, batch_axis: str | tuple[str, ...] | None = None, name: str = "batch_axis"
) -> tuple[str, ...]:
    """The axis names of `mesh` the prompt batch is split over: `batch_axis` (one name or a
    tuple of names) checked against the mesh, or the mesh's first axis; errors call the
    argument `name` (`target_axis` where targets are split)."""
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"mesh must be a jax.sharding.Mesh (e.g. Mesh(np.array(jax.devices()), ('batch',)));"
            f" got {type(mesh).__name__}"
        )
    names = tuple(mesh.axis_names)
    if batch_axis is None:
        return names[:1]
    axes = (batch_axis,) if isinstance(batch_axis, str) else tuple(batch_axis)
    if not axes or len(set(axes)) != len(axes):
        raise ValueError(
            f"{name} must be one axis name or a tuple of distinct names of the mesh "
            f"{names}; got {batch_axis!r}"
        )
    for a in axes:
        if a not in names:
            raise ValueError(
                f"{name} {a!r} is not an axis of the mesh{nearest_word(a, names)}; its "
                f"axes are {names} (shape {tuple(mesh.devices.shape)})"
            )
    return axes


def check_splittable(splittable: bool, metric, what: str) -> None:
    """Refuse a mesh for a `metric` that is not a mean over examples (`splittable`, from
    `jaxcirc.metrics.is_example_mean`): its batch cannot be split across devices."""
    if not splittable:
        name = getattr(metric, "__qualname__", type(metric).__qualname__)
        raise ValueError(
            f"{what} with mesh= splits the prompts over devices, so its metric must be a mean "
            f"over examples with a per-example form; {name} declares none. Give it "
            f"`per_example(logits, rows) -> [n]` (see jaxcirc.metrics), build it with "
            f"jaxcirc.metrics.bind, or run without mesh="
        )


def axis_size(mesh: Mesh, axes: tuple[str, ...]) -> int:
    """How many devices the batch is split over: the product of the sizes of `axes`."""
    return math.prod(mesh.shape[a] for a in axes)


def layout(batch: int, n_devices: int, size: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """`(rows, valid, k, s)`: the prompt each slot holds, `[n_devices · k · s]`, device-major
    (device `d` holds prompts `d·⌈batch/n⌉` on), padded with the last prompt; which slots
    count; and each device's `k` chunks of `s` prompts (`s` at most `size`)."""
    per = -(-batch // n_devices)
    s = max(1, min(int(size), per))
    k = -(-per // s)
    device, slot = np.divmod(np.arange(n_devices * k * s), k * s)
    row = device * per + slot
    valid = (slot < per) & (row < batch)
    return np.minimum(row, batch - 1).astype(np.int32), valid, k, s


def replicate(mesh: Mesh, tree):
    """Every array of `tree` placed whole on every device of `mesh` (other leaves as given)."""
    where = NamedSharding(mesh, P())
    return jax.tree_util.tree_map(
        lambda x: jax.device_put(x, where) if eqx.is_array(x) else x, tree
    )


def shard_prompts(mesh: Mesh, axes: tuple[str, ...], tree, rows: np.ndarray):
    """Every array of `tree` (batch first) taken at `rows` and split over `axes` of `mesh`
    along its first axis (`None` leaves stay `None`)."""
    where = NamedSharding(mesh, P(axes))
    take = lambda x: jax.device_put(jnp.take(jnp.asarray(x), jnp.asarray(rows), axis=0), where)
    return jax.tree_util.tree_map(take, tree)


_recorders: list[list] = []


@contextlib.contextmanager
def recording() -> Iterator[list]:
    """Collect `(program, inputs)` of every SPMD program run inside the block, for a look at
    its HLO or per-device memory: `program.lower(*inputs).compile().memory_analysis()`."""
    seen: list = []
    _recorders.append(seen)
    try:
        yield seen
    finally:
        _recorders.remove(seen)


def program(fn: Callable, args, prompts, batch: int, size: int, mesh: Mesh, axes: tuple[str, ...]):
    """`(compiled function, its inputs)`: the SPMD program of `mean_over_mesh` before it runs
    (`function.lower(*inputs)` gives its HLO and `memory_analysis`)."""
    split = [
        x
        for x in jax.tree_util.tree_leaves(args)
        if isinstance(x, jax.Array) and not x.sharding.is_fully_replicated
    ]
    if split:
        raise ValueError(
            f"mesh= splits the prompts and gives every device the whole model, but {len(split)} "
            f"of its arrays are split over devices (a model-parallel model, "
            f"jaxcirc.models.shard_model; the first of shape {split[0].shape}, laid out "
            f"{getattr(split[0].sharding, 'spec', split[0].sharding)}); run without mesh=: the "
            "program is then partitioned over the devices the weights are on"
        )
    rows, valid, k, s = layout(batch, axis_size(mesh, axes), size)
    inputs = (
        replicate(mesh, args),
        shard_prompts(mesh, axes, prompts, rows),
        shard_prompts(mesh, axes, (rows, valid), np.arange(len(rows))),
    )
    return _Program(fn, mesh, axes, k, s), inputs


class _Program(eqx.Module):
    """`fn` summed over each device's chunks of prompts, then over the devices (`psum`)."""

    fn: Callable = eqx.field(static=True)
    mesh: Mesh = eqx.field(static=True)
    axes: tuple[str, ...] = eqx.field(static=True)
    k: int = eqx.field(static=True)
    s: int = eqx.field(static=True)

    def __call__(self, args, prompts, rows_valid):
        return _run(self, args, prompts, rows_valid)

    def lower(self, args, prompts, rows_valid):
        """The program as a `jax.stages.Lowered` (`.as_text()`, `.compile()`)."""
        return _run.lower(self, args, prompts, rows_valid).lowered


@eqx.filter_jit
def _run(self: _Program, args, prompts, rows_valid):
    dynamic, static = eqx.partition(args, eqx.is_array)

    def body(dynamic, prompts, rows_valid):
        here = eqx.combine(dynamic, static)
        chunks = jax.tree_util.tree_map(
            lambda x: x.reshape(self.k, self.s, *x.shape[1:]), (prompts, rows_valid)
        )

        def one(chunk):
            p, (r, v) = chunk
            return self.fn(here, p, r, v)

        if self.k == 1:
            total = one(jax.tree_util.tree_map(lambda x: x[0], chunks))
        else:
            total = jax.tree_util.tree_map(lambda x: x.sum(0), jax.lax.map(one, chunks))
        return jax.lax.psum(total, self.axes)

    spec = P(self.axes)
    # the engines' scans start from zeros they do not mark as varying: no varying-axis checks
    # (the one result that leaves the body is the psum, the same on every device)
    run = jax.shard_map(
        body, mesh=self.mesh, in_specs=(P(), spec, spec), out_specs=P(), check_vma=False
    )
    return run(dynamic, prompts, rows_valid)


def mean_over_mesh(
    fn: Callable, args, prompts, batch: int, size: int, mesh: Mesh, axes: tuple[str, ...]
):
    """`Σ fn(args, prompts[rows], rows, valid) / batch` with the prompts split over `axes`.

    - `fn(args, prompts, rows, valid)`: a module-level function (so the compiled program is
      reused) returning (a pytree of) sums over the `valid` prompts of a chunk; `rows` are
      their indices in the whole batch (for a metric's per-example arguments).
    - `args`: replicated on every device (the model, the metric, static settings).
    - `prompts`: a pytree of arrays with the batch first (tokens, positions, keys), split.
    - `size`: prompts a device runs at once (its memory budget's choice).
    """
    run, inputs = program(fn, args, prompts, batch, size, mesh, axes)
    for seen in _recorders:
        seen.append((run, inputs))
    return jax.tree_util.tree_map(lambda x: x / batch, run(*inputs))


def check_divides(mesh: Mesh, axes: tuple[str, ...], size: int, what: str = "batch") -> None:
    """Refuse a `size` that does not split evenly over `axes`, naming the nearest that do."""
    n = axis_size(mesh, axes)
    if size % n:
        nearest = sorted({m for m in (size // n * n, -(-size // n) * n) if m > 0})
        raise ValueError(
            f"the {what} of {size} does not split evenly over the {n} devices of mesh axes "
            f"{axes}; use a multiple of {n} (nearest: {' or '.join(map(str, nearest))})"
        )


def split_along(mesh: Mesh, axes: tuple[str, ...], x, dim: int = 0, *, what: str = "batch"):
    """`x` placed on `mesh` with dimension `dim` split over `axes` (the rest replicated): the
    data-parallel layout of the trainers and solvers, whose compiled step then runs as one
    SPMD program (GSPMD inserts the reductions). The dimension must divide evenly."""
    check_divides(mesh, axes, np.shape(x)[dim], what)
    spec = [None] * np.ndim(x)
    spec[dim] = axes
    return jax.device_put(x, NamedSharding(mesh, P(*spec)))
