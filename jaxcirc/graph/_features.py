"""The graph of a sparse feature circuit (Marks et al. 2025, arXiv 2403.19647, §2): SAE
features and error nodes of spliced sites, with edges from each site to the next one in
computation order and from the last site to the metric (`logits`).

A `FeatureGraph` has the interface of `Graph` that `Scores` and `Circuit` read (`sources`,
`targets`, `valid`, `unit_name`, `edge_index`), so node scores, circuits, their `top` /
`above` and set operations apply. Every source node is a unit (`node_valid`), with or
without edges. Position-specific nodes (`position` set) feed only nodes at the same or a
later position (a causal model); nodes summed over positions (`position=None`) feed every
node of the next site.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from ..models._site import SiteRef, nearest
from ._graph import Node


def short_site(site: str | None) -> str:
    """`"resid_post5"` for `"blocks.5.hook_resid_post"`, `"embed"` for `"hook_embed"`."""
    if site is None:
        return "?"
    try:
        ref = SiteRef.parse(site)
    except (ValueError, KeyError):
        return site
    return ref.kind if ref.layer is None else f"{ref.kind}{ref.layer}"


def site_order(site: str) -> tuple[int, int]:
    """The place of a site in the forward pass (for sorting SAE sites)."""
    from ..models._transformer import _computation_order

    return _computation_order(site)


@dataclasses.dataclass(frozen=True)
class FeatureGraph:
    """SAE feature and error nodes of `sites` (in computation order); build one with
    `FeatureGraph.of(nodes)`.

    `source_nodes`: the nodes (`Node(kind="feature"|"error", index=feature id, site=…,
    position=…)`); `target_nodes`: the same nodes, then `Node("logits")` (the metric).
    An edge `u -> d` exists when `d`'s site is the one after `u`'s in `sites` (and, for
    position-specific nodes, `d` is not earlier than `u`), or `d` is the metric and `u` is
    at the last site.
    """

    sites: tuple[str, ...]
    source_nodes: tuple[Node, ...]

    @classmethod
    def of(cls, nodes, sites=None) -> FeatureGraph:
        """The graph of `nodes` (`Node`s or `(site, position, feature id or None)` tuples),
        sorted by site (computation order), position and id (errors last per position)."""
        nodes = [n if isinstance(n, Node) else feature_node(*n) for n in nodes]
        for n in nodes:
            if n.kind not in ("feature", "error") or n.site is None:
                raise ValueError(f"a FeatureGraph holds feature and error nodes; got {n!r}")
        if sites is None:
            sites = sorted({n.site for n in nodes}, key=site_order)
        sites = tuple(sites)
        rank = {s: i for i, s in enumerate(sites)}
        missing = {n.site for n in nodes} - set(rank)
        if missing:
            raise ValueError(f"nodes at sites {sorted(missing)} not among sites {list(sites)}")

        def key(n):
            pos = -1 if n.position is None else n.position
            return rank[n.site], pos, n.kind == "error", n.index or 0

        nodes = sorted(set(nodes), key=key)
        return cls(sites, tuple(nodes))

    @functools.cached_property
    def target_nodes(self) -> tuple[Node, ...]:
        return (*self.source_nodes, Node("logits"))

    @functools.cached_property
    def sources(self) -> tuple[str, ...]:
        return tuple(str(n) for n in self.source_nodes)

    @functools.cached_property
    def targets(self) -> tuple[str, ...]:
        return (*self.sources, "logits")

    @property
    def n_sources(self) -> int:
        return len(self.source_nodes)

    @property
    def n_targets(self) -> int:
        return len(self.source_nodes) + 1

    @functools.cached_property
    def site_index(self) -> np.ndarray:
        """`[n_sources]`: the place of each node's site in `sites`."""
        rank = {s: i for i, s in enumerate(self.sites)}
        return np.asarray([rank[n.site] for n in self.source_nodes], np.int64)

    @functools.cached_property
    def positions(self) -> np.ndarray:
        """`[n_sources]`: each node's position (−1 for a node of all positions)."""
        return np.asarray([-1 if n.position is None else n.position for n in self.source_nodes],
                          np.int64)  # fmt: skip

    @functools.cached_property
    def node_valid(self) -> np.ndarray:
        return np.ones(self.n_sources, bool)

    @functools.cached_property
    def valid(self) -> np.ndarray:
        """`[n_sources, n_targets]` booleans (dense: build edge graphs on kept nodes)."""
        s, p = self.site_index, self.positions
        nxt = s[:, None] + 1 == s[None, :]
        causal = (p[:, None] < 0) | (p[None, :] < 0) | (p[:, None] <= p[None, :])
        last = (s == len(self.sites) - 1)[:, None]
        return np.concatenate([nxt & causal, last], axis=1)

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    @functools.cached_property
    def _lookup(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.sources)}

    def index(self, node) -> int:
        """The row of `node` (a `Node`, its printed name or a `(site, position, id)` tuple)."""
        if isinstance(node, tuple):
            node = feature_node(*node)
        name = str(node)
        if name not in self._lookup:
            raise ValueError(
                f"no node {name!r} in this feature graph{nearest(name, self.sources[:5000])}"
            )
        return self._lookup[name]

    def source_index(self, name) -> int:
        return self.index(name)

    def target_index(self, name) -> int:
        return self.n_sources if str(name) == "logits" else self.index(name)

    def edge_index(self, source, target) -> tuple[int, int]:
        i, j = self.source_index(source), self.target_index(target)
        if not self.valid[i, j]:
            raise ValueError(
                f"no edge {source} -> {target}: edges join a site to the next one "
                f"({' -> '.join(map(short_site, self.sites))} -> logits), not backwards in "
                "position"
            )
        return i, j

    def edge_array(self, edges) -> np.ndarray:
        out = np.zeros((self.n_sources, self.n_targets), bool)
        for source, target in edges:
            out[self.edge_index(source, target)] = True
        return out

    def edges(self) -> list[tuple[str, str]]:
        return [(self.sources[i], self.targets[j]) for i, j in zip(*np.nonzero(self.valid))]

    def unit_name(self, index) -> str:
        if len(index) == 1:
            return f"node {self.sources[index[0]]}"
        return f"edge {self.sources[index[0]]} -> {self.targets[index[1]]}"

    def restrict(self, keep) -> FeatureGraph:
        """The graph of the nodes where `keep` (`[n_sources]` booleans) holds."""
        keep = np.asarray(keep, bool)
        return FeatureGraph(self.sites, tuple(n for n, k in zip(self.source_nodes, keep) if k))


def feature_node(site: str, position: int | None, feature: int | None) -> Node:
    """The `Node` of a feature (`feature` an id) or of the error (`feature=None`)."""
    pos = None if position is None else int(position)
    if feature is None:
        return Node("error", site=site, position=pos)
    return Node("feature", index=int(feature), site=site, position=pos)
