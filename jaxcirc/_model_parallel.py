"""Model parallelism: a `Transformer`'s weights split over one axis of a device mesh.

The layout is Megatron-LM's (Shoeybi et al. 2019, arXiv:1909.08053): attention is split by
heads (`W_Q`, `W_K`, `W_V`, their biases and `W_O` on their heads dimension), MLPs by hidden
units (`W_in`, `W_gate`, their biases on `d_mlp`, `W_out` on its `d_mlp` rows), the embedding
and unembedding by the vocabulary (`W_E` rows, `W_U` columns, `b_U`, the bigram table's
columns). Everything else (norms, `b_O`, `b_out`, positional embeddings, attention sinks,
interventions' arrays) is replicated. Each device thus holds `1/n` of every split weight and
never the whole of one. Nothing else changes: a compiled program reads the placed weights
and GSPMD (Xu et al. 2021) partitions it, adding the all-reduces of the heads' and hidden
units' partial sums; every method runs on a placed model as written.

**Dimensions the axis does not divide.** Keys and values of grouped-query attention with
fewer KV heads than the axis has devices (or any count the axis size does not divide) are
replicated: they are small, and each device then slices the heads its queries read, which
is exact. Any other split dimension the axis size does not divide is an error naming the
weight, its dimension and the axis sizes that split every weight of the model; nothing is
padded or approximated.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ._checks import nearest_word

# the end of a weight's name -> (the dimension split, what that dimension counts)
SPLIT: dict[str, tuple[int, str]] = {
    **{f"attn.{w}": (0, "heads") for w in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")},
    **{f"mlp.{w}": (1, "MLP hidden units") for w in ("W_in", "W_gate")},
    **{f"mlp.{w}": (0, "MLP hidden units") for w in ("b_in", "b_gate", "W_out")},
    "embed.W_E": (0, "vocabulary"),
    "unembed.W_U": (1, "vocabulary"),
    "unembed.b_U": (0, "vocabulary"),
    "unembed.bigram": (1, "vocabulary"),
}
# replicated, not refused, when the axis size does not divide their (KV) heads
KV = frozenset(f"attn.{w}" for w in ("W_K", "W_V", "b_K", "b_V"))


def _kind(name: str) -> str:
    """`blocks.3.attn.W_Q` -> `attn.W_Q`; names outside the blocks unchanged."""
    parts = name.split(".")
    return ".".join(parts[2:]) if parts[0] == "blocks" and len(parts) > 2 else name


def check_axis(mesh, axis) -> int:
    """The size of mesh axis `axis` (a name of `mesh`), or an error naming the mesh's axes."""
    if not isinstance(mesh, Mesh):
        raise TypeError(
            "mesh must be a jax.sharding.Mesh (e.g. Mesh(np.array(jax.devices()), ('model',))); "
            f"got {type(mesh).__name__}"
        )
    names = tuple(mesh.axis_names)
    if not isinstance(axis, str) or axis not in names:
        raise ValueError(
            f"model axis {axis!r} is not an axis of the mesh{nearest_word(axis, names)}; its "
            f"axes are {names} (shape {tuple(mesh.devices.shape)}): pass model_axis= (axis= "
            "for shard_model) one of them"
        )
    return int(mesh.shape[axis])


def weight_spec(name: str, shape: tuple[int, ...], axis: str = "model", size: int = 1) -> P:
    """The `PartitionSpec` of weight `name` (as in `jaxcirc.models.state_dict`, e.g.
    `"blocks.3.attn.W_Q"`) of `shape` split over mesh axis `axis` of `size` devices; `P()`
    (replicated) for weights that are not split. Raises `ValueError` when `size` does not
    divide the split dimension (except grouped-query keys and values: replicated)."""
    kind = _kind(name)
    if kind not in SPLIT or len(shape) <= SPLIT[kind][0]:
        return P()
    dim, what = SPLIT[kind]
    if shape[dim] % size:
        if kind in KV:
            return P()
        raise ValueError(
            f"cannot split weight {name!r} (shape {tuple(shape)}) over mesh axis {axis!r} of "
            f"{size} devices: its dimension {dim} ({what}) has {shape[dim]}, which {size} does "
            f"not divide (nearest that do: {_nearest(shape[dim], size)})"
        )
    spec = [None] * len(shape)
    spec[dim] = axis
    return P(*spec)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _nearest(n: int, size: int) -> str:
    """The divisors of `n` nearest `size`, below and above."""
    below = [d for d in _divisors(n) if d < size][-1:]
    above = [d for d in _divisors(n) if d > size][:1]
    return " or ".join(map(str, below + above))


def _sizes(dims) -> str:
    """The axis sizes that divide every one of `dims`."""
    return ", ".join(map(str, _divisors(math.gcd(*dims))[:12]))


def layout(shapes: dict[str, tuple[int, ...]], mesh, axis: str = "model") -> dict[str, P]:
    """Every weight's `PartitionSpec` (`weight_spec`), checked before anything is placed: a
    dimension the axis does not divide is an error that also names the axis sizes that split
    every weight of the model."""
    size = check_axis(mesh, axis)
    dims = [
        s[SPLIT[_kind(n)][0]]
        for n, s in shapes.items()
        if _kind(n) in SPLIT and _kind(n) not in KV and len(s) > SPLIT[_kind(n)][0]
    ]
    if not dims:
        raise ValueError(
            "model parallelism splits a jaxcirc Transformer's weights, found by name "
            f"({', '.join(sorted(SPLIT)[:3])}, …), but none of the {len(shapes)} arrays given "
            f"is one: {sorted(shapes)[:3]}; pass a Transformer"
        )
    try:
        return {n: weight_spec(n, s, axis, size) for n, s in shapes.items()}
    except ValueError as e:
        raise ValueError(
            f"{e}. The axis sizes that split every weight of this model: {_sizes(dims)}"
        ) from None


def _name(keypath) -> str:
    """A tree path as a dotted name (`blocks.3.attn.W_Q`), as `jaxcirc.models.state_dict`."""
    return jax.tree_util.keystr(keypath, simple=True, separator=".")


def shard_model(model, mesh: Mesh, axis: str = "model"):
    """`model` with every weight placed on `mesh`, split over `axis` as the module docstring
    says (heads, MLP hidden units, vocabulary; the rest replicated). Every method runs on the
    result unchanged: its compiled programs take the weights where they are. To load a model
    too large for one device, give the loaders `mesh=` instead (`jaxcirc.load(path,
    mesh=mesh)`): they place each tensor as they read it."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(model)
    shapes = {_name(p): x.shape for p, x in leaves if eqx.is_array(x)}
    specs = layout(shapes, mesh, axis)
    placed = [
        jax.device_put(x, NamedSharding(mesh, specs[_name(p)])) if eqx.is_array(x) else x
        for p, x in leaves
    ]
    return jax.tree_util.tree_unflatten(treedef, placed)


class Placer(dict):
    """Named host arrays, each put straight into its layout as it is stored (`out[name] =
    array`): cast to `dtype` on the host, then every device given only its own slice
    (`jax.make_array_from_callback`), so no device ever holds a whole split weight and the
    caller can drop the host copy before reading the next. Names not in `specs`, or of
    another shape, are kept as given (for the model's builder to refuse)."""

    def __init__(self, specs: dict[str, P], shapes: dict, mesh: Mesh, dtype):
        super().__init__()
        self.specs, self.shapes, self.mesh, self.dtype = specs, shapes, mesh, np.dtype(dtype)

    def __setitem__(self, name: str, value) -> None:
        if name in self.specs and tuple(np.shape(value)) == tuple(self.shapes[name]):
            where = NamedSharding(self.mesh, self.specs[name])
            if isinstance(value, jax.Array):  # derived from a placed weight (tied W_U = W_E.T)
                value = jax.device_put(value.astype(self.dtype), where)
            else:
                host = np.asarray(value).astype(self.dtype, copy=False)
                value = jax.make_array_from_callback(
                    host.shape, where, lambda index: np.array(host[index], copy=True)
                )
        super().__setitem__(name, value)

    def update(self, other=(), **more) -> None:
        for name, value in dict(other, **more).items():
            self[name] = value
