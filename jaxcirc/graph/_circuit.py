"""The result vocabulary of circuit discovery: `Scores` and `Circuit` on a `Graph`.

Every discovery method returns one of these on the same graph, the ground truth of a compiled
model is a `Circuit`, and every metric, plot and scorecard takes them. Both live at the edge
level (`[n_sources, n_targets]`, cells where no edge exists are ignored) or the node level
(`[n_sources]`, a source node with all its outgoing edges).
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from .._finite import check_finite
from ._graph import Graph


def _check_shape(what: str, values, g: Graph) -> None:
    edge, node = (g.n_sources, g.n_targets), (g.n_sources,)
    if tuple(values.shape) not in (edge, node):
        raise ValueError(
            f"{what} has shape {tuple(values.shape)}; expected {edge} (one per edge) or "
            f"{node} (one per source node) for this graph"
        )


def _valid(values, g: Graph) -> np.ndarray:
    if np.ndim(values) == 2:
        return g.valid
    return g.node_valid


class Scores(eqx.Module):
    """One value per edge (`[n_sources, n_targets]`) or per source node (`[n_sources]`) of
    `graph`: **larger = more important**, NaN = not measured.

    `signed`, where a method measures one, is the signed effect behind the score (for patching
    and attribution: the change of the metric when the unit is ablated, whose magnitude is
    `values`). Build one from effects with `Scores.from_effects`.
    """

    values: Float[Array, ...]
    graph: Graph = eqx.field(static=True)
    signed: Float[Array, ...] | None = None

    def __check_init__(self):
        _check_shape("Scores values", self.values, self.graph)
        if self.signed is not None and self.signed.shape != self.values.shape:
            raise ValueError(f"signed {self.signed.shape} must match values {self.values.shape}")

    @classmethod
    def from_effects(cls, effects, g: Graph) -> Scores:
        """Scores `|effects|`, keeping the signed effects."""
        effects = jnp.asarray(effects)
        return cls(jnp.abs(effects), g, effects)

    def require_finite(self, what: str, diagnose=None) -> Scores:
        """These scores, or a `NonFiniteError` naming the first edge (node) whose score is
        NaN or inf (`diagnose()` may say where it starts; see `jaxcirc._finite`)."""
        arrays = {"scores": self.values}
        if self.signed is not None:
            arrays["signed scores"] = self.signed
        check_finite(arrays, what, names=self.graph.unit_name, valid=self.valid, diagnose=diagnose)
        return self

    @property
    def level(self) -> str:
        """`"edge"` or `"node"`."""
        return "edge" if self.values.ndim == 2 else "node"

    @property
    def valid(self) -> np.ndarray:
        """Which cells are units of the graph (edges that exist; nodes with an edge)."""
        return _valid(self.values, self.graph)

    def flat(self) -> np.ndarray:
        """The values of the valid units, in the order of `graph.edges()` (or sources)."""
        return np.asarray(self.values)[self.valid]

    def top(self, n: int) -> Circuit:
        """The circuit of the `n` valid units of largest score (NaN scores last)."""
        valid = self.valid
        if not 0 <= int(n) <= valid.sum():
            raise ValueError(f"n={n}: expected 0..{int(valid.sum())} (the number of units)")
        key = np.where(valid, np.nan_to_num(np.asarray(self.values, np.float64), nan=-np.inf),
                       -np.inf)  # fmt: skip
        keep = np.zeros(key.size, bool)
        keep[np.argsort(-key, axis=None, kind="stable")[: int(n)]] = True
        return Circuit(jnp.asarray(keep.reshape(key.shape)), self.graph, self)

    def above(self, threshold: float) -> Circuit:
        """The circuit of the valid units whose score exceeds `threshold`."""
        keep = (np.nan_to_num(np.asarray(self.values), nan=-np.inf) > threshold) & self.valid
        return Circuit(jnp.asarray(keep), self.graph, self)

    def nodes(self) -> Scores:
        """Node scores: a source's largest score over its outgoing edges."""
        if self.level == "node":
            return self
        values = jnp.where(jnp.asarray(self.graph.valid), self.values, -jnp.inf).max(1)
        return Scores(jnp.where(jnp.asarray(self.graph.node_valid), values, 0.0), self.graph)


class Circuit(eqx.Module):
    """A sub-graph of `graph`: `mask` (bool, per edge or per source node) with the `scores` it
    was chosen by (or `None`) and free-form `info` (a method's diagnostics).

    `circuit.edges()` lists it; `|`, `&`, `-` and `~` are set operations (within the graph's
    units); `len(circuit)` counts its units; `circuit.top(n)` / `.above(t)` re-select by its
    scores; `circuit.values` (0/1 floats) is what the masked forward pass reads
    (`jaxcirc.graph.masked_logits`).
    """

    mask: Bool[Array, ...]
    graph: Graph = eqx.field(static=True)
    scores: Scores | None = None
    info: dict = eqx.field(default_factory=dict)

    def __check_init__(self):
        _check_shape("Circuit mask", self.mask, self.graph)
        if self.scores is not None and self.scores.graph != self.graph:
            raise ValueError("a circuit's scores must be on its own graph")

    @classmethod
    def from_edges(cls, g: Graph, edges, **info) -> Circuit:
        """The circuit of `edges`, pairs of source and target (typed `Node`s or names)."""
        return cls(jnp.asarray(g.edge_array(edges)), g, None, info)

    @classmethod
    def full(cls, g: Graph) -> Circuit:
        """Every edge of `g`: the whole model."""
        return cls(jnp.asarray(g.valid), g)

    @property
    def level(self) -> str:
        return "edge" if self.mask.ndim == 2 else "node"

    @property
    def valid(self) -> np.ndarray:
        return _valid(self.mask, self.graph)

    @property
    def values(self) -> Float[Array, ...]:
        """The mask as 0/1 floats on the valid units."""
        return jnp.asarray(np.asarray(self.mask) & self.valid, jnp.float32)

    def to_edges(self) -> Circuit:
        """An edge circuit: a node circuit keeps every outgoing edge of its nodes."""
        if self.level == "edge":
            return self
        mask = np.asarray(self.mask)[:, None] & self.graph.valid
        return Circuit(jnp.asarray(mask), self.graph, None, self.info)

    def edges(self) -> list[tuple[str, str]]:
        """The kept edges as `(source, target)` names, in computation order."""
        keep = np.asarray(self.to_edges().mask) & self.graph.valid
        g = self.graph
        return [(g.sources[i], g.targets[j]) for i, j in zip(*np.nonzero(keep))]

    def nodes(self) -> list[str]:
        """The source nodes with at least one kept edge (or kept, for a node circuit)."""
        keep = np.asarray(self.mask) & self.valid
        keep = keep.any(1) if keep.ndim == 2 else keep
        return [self.graph.sources[i] for i in np.flatnonzero(keep)]

    def __len__(self) -> int:
        return int((np.asarray(self.mask) & self.valid).sum())

    def top(self, n: int) -> Circuit:
        return self._scores("top").top(n)

    def above(self, threshold: float) -> Circuit:
        return self._scores("above").above(threshold)

    def _scores(self, what: str) -> Scores:
        if self.scores is None:
            raise ValueError(f"this circuit has no scores to select by ({what})")
        return self.scores

    def _combine(self, other: Circuit, op) -> Circuit:
        if not isinstance(other, Circuit):
            return NotImplemented
        if other.graph != self.graph:
            raise ValueError("cannot combine circuits of different graphs")
        a, b = self, other
        if a.level != b.level:
            a, b = a.to_edges(), b.to_edges()
        mask = op(np.asarray(a.mask), np.asarray(b.mask)) & a.valid
        return Circuit(jnp.asarray(mask), self.graph)

    def __or__(self, other):
        return self._combine(other, np.logical_or)

    def __and__(self, other):
        return self._combine(other, np.logical_and)

    def __sub__(self, other):
        return self._combine(other, lambda x, y: x & ~y)

    def __invert__(self) -> Circuit:
        return Circuit(jnp.asarray(~np.asarray(self.mask) & self.valid), self.graph)
