"""The computational graph of a transformer: nodes, their inputs, and the edges between them.

Sources are the outputs written into the residual stream: the input embedding (`embed`), each
attention head (`L{l}H{h}`, its share of the attention output, without `b_O`) and each MLP
(`MLP{l}`). Targets are the inputs read from it: each head's query, key and value inputs
(`L{l}H{h}.q`, `.k`, `.v`; with grouped-query attention the key and value inputs belong to
the shared head, `L{l}KV{g}.k`), each MLP's input (`MLP{l}`) and the unembedding (`logits`).
An edge joins a source to every target computed after it (Conmy et al. 2023, ACDC; Syed et
al. 2023, EAP); which edges exist is `Graph.valid`, an `[n_sources, n_targets]` boolean.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from ..models._site import nearest


@dataclasses.dataclass(frozen=True)
class Graph:
    """Static structure of a model's edge graph; build it with `graph(model)`.

    `sources` and `targets` are names in computation order; `source_order[i]` and
    `target_order[j]` are their places in that order, and an edge `i -> j` exists when
    `source_order[i] < target_order[j]`. Hashable, so it is a static field under `jit`.
    """

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    source_order: tuple[int, ...]
    target_order: tuple[int, ...]
    n_layers: int
    n_heads: int
    n_kv_heads: int
    has_mlp: bool
    parallel: bool

    @functools.cached_property
    def valid(self) -> np.ndarray:
        """`[n_sources, n_targets]` booleans: which source feeds which target."""
        return np.asarray(self.source_order)[:, None] < np.asarray(self.target_order)[None, :]

    @property
    def n_sources(self) -> int:
        return len(self.sources)

    @property
    def n_targets(self) -> int:
        return len(self.targets)

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    def edges(self) -> list[tuple[str, str]]:
        """Every edge as `(source, target)`, sources in computation order."""
        return [(self.sources[i], self.targets[j]) for i, j in zip(*np.nonzero(self.valid))]

    def source_index(self, name: str) -> int:
        """The row of source `name`; a clear error names the nearest source otherwise."""
        return self._index(name, self.sources, "source")

    def target_index(self, name: str) -> int:
        """The column of target `name`; a clear error names the nearest target otherwise."""
        return self._index(name, self.targets, "target")

    def edge_index(self, source: str, target: str) -> tuple[int, int]:
        """`(row, column)` of edge `source -> target`; raises if it does not exist."""
        i, j = self.source_index(source), self.target_index(target)
        if not self.valid[i, j]:
            raise ValueError(
                f"no edge {source} -> {target}: {source} is computed after {target} reads "
                f"the residual stream"
            )
        return i, j

    def edge_array(self, edges) -> np.ndarray:
        """`[n_sources, n_targets]` booleans, true on `edges` (pairs of names)."""
        out = np.zeros(self.valid.shape, bool)
        for source, target in edges:
            out[self.edge_index(source, target)] = True
        return out

    @staticmethod
    def _index(name, names, what):
        try:
            return names.index(name)
        except ValueError:
            raise ValueError(
                f"unknown {what} {name!r}{nearest(name, names)}; {what}s look like "
                f"{', '.join(names[:3])}, …, {names[-1]}"
            ) from None

    @functools.cached_property
    def target_sources(self) -> tuple[tuple[int, ...], ...]:
        """For each target, the sources whose output it feeds (none for `logits`)."""
        group = self.n_heads // self.n_kv_heads
        out = []
        for name in self.targets:
            node, _, kind = name.partition(".")
            if name == "logits":
                out.append(())
            elif "KV" in node:  # a shared key/value head feeds its group of query heads
                layer, g = (int(x) for x in node[1:].split("KV"))
                out.append(
                    tuple(
                        self.sources.index(f"L{layer}H{h}")
                        for h in range(g * group, (g + 1) * group)
                    )
                )
            else:
                out.append((self.sources.index(node),))
        return tuple(out)

    # slices of the stacked sources and targets, per layer
    def head_sources(self, layer: int) -> slice:
        start = self.sources.index(f"L{layer}H0")
        return slice(start, start + self.n_heads)

    def mlp_source(self, layer: int) -> int:
        return self.sources.index(f"MLP{layer}")

    def qkv_targets(self, layer: int) -> tuple[slice, slice, slice]:
        q = self.targets.index(f"L{layer}H0.q")
        k = q + self.n_heads
        v = k + self.n_kv_heads
        return slice(q, k), slice(k, v), slice(v, v + self.n_kv_heads)

    def mlp_target(self, layer: int) -> int:
        return self.targets.index(f"MLP{layer}")


def graph(model) -> Graph:
    """The edge graph of `model` (a `jaxcirc.Transformer`): heads with separate q/k/v inputs."""
    cfg = model.cfg
    cfg.require_uniform("jaxcirc.graph")
    n_kv = cfg.n_kv_heads or cfg.n_heads
    has_mlp = cfg.block != "attn_only"
    parallel = cfg.block == "parallel"
    kv = "H" if n_kv == cfg.n_heads else "KV"
    sources, source_order, targets, target_order = ["embed"], [0], [], []
    for layer in range(cfg.n_layers):
        attn, mlp = 2 * layer + 1, 2 * layer + 2
        sources += [f"L{layer}H{h}" for h in range(cfg.n_heads)]
        source_order += [attn] * cfg.n_heads
        targets += [f"L{layer}H{h}.q" for h in range(cfg.n_heads)]
        targets += [f"L{layer}{kv}{g}.{x}" for x in "kv" for g in range(n_kv)]
        target_order += [attn] * (cfg.n_heads + 2 * n_kv)
        if has_mlp:
            sources.append(f"MLP{layer}")
            source_order.append(mlp)
            targets.append(f"MLP{layer}")
            target_order.append(attn if parallel else mlp)
    targets.append("logits")
    target_order.append(2 * cfg.n_layers + 1)
    return Graph(
        tuple(sources), tuple(targets), tuple(source_order), tuple(target_order),
        cfg.n_layers, cfg.n_heads, n_kv, has_mlp, parallel,
    )  # fmt: skip
