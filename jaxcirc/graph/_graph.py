"""The computational graph of a transformer: typed nodes, their inputs, and the edges.

Sources are the outputs written into the residual stream: the input embedding (`embed`), each
attention head (`L{l}H{h}`, its share of the attention output, without `b_O`) and each MLP
(`MLP{l}`). Targets are the inputs read from it: each head's query, key and value inputs
(`L{l}H{h}.q`, `.k`, `.v`; with grouped-query attention the key and value inputs belong to
the shared head, `L{l}KV{g}.k`), each MLP's input (`MLP{l}`) and the unembedding (`logits`).
An edge joins a source to every target computed after it (Conmy et al. 2023, ACDC; Syed et
al. 2023, EAP); which edges exist is `Graph.valid`, an `[n_sources, n_targets]` boolean.

The structure is read off the model itself: `graph(model)` runs each block's `split` form once
abstractly and records which inputs it reads and which outputs it writes, in order. So a new
block class (or finer nodes inside one) brings its graph with it.
"""

from __future__ import annotations

import dataclasses
import functools

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ..models._site import nearest


@dataclasses.dataclass(frozen=True)
class Node:
    """A typed node: `kind` (`"embed"`, `"head"`, `"kv"`, `"mlp"`, `"logits"`), its `layer`
    and `index` (head or key/value group) where it has them, and for an input of a head its
    `port` (`"q"`, `"k"`, `"v"`). `str(node)` is its printed name (`"L1H3.q"`).

    SAE nodes (`jaxcirc.graph.FeatureGraph`): kind `"feature"` (`index` = feature id) or
    `"error"` at a `site` and `position` (`None`: all positions), printed
    `"resid_post5[12].F301"` / `"resid_post5[12].err"`."""

    kind: str
    layer: int | None = None
    index: int | None = None
    port: str | None = None
    site: str | None = None
    position: int | None = None

    def __str__(self) -> str:
        if self.kind in ("feature", "error"):
            from ._features import short_site

            at = "" if self.position is None else f"[{self.position}]"
            tail = "err" if self.kind == "error" else f"F{self.index}"
            return f"{short_site(self.site)}{at}.{tail}"
        base = {
            "embed": "embed",
            "logits": "logits",
            "mlp": f"MLP{self.layer}",
            "head": f"L{self.layer}H{self.index}",
            "kv": f"L{self.layer}KV{self.index}",
        }[self.kind]
        return base if self.port is None else f"{base}.{self.port}"


@dataclasses.dataclass(frozen=True)
class Graph:
    """Static structure of a model's edge graph; build it with `graph(model)`.

    `source_nodes` and `target_nodes` are typed `Node`s in computation order, `sources` and
    `targets` their printed names; `source_order[i]` and `target_order[j]` are their places in
    that order, and an edge `i -> j` exists when `source_order[i] < target_order[j]`.
    `layer_sources[l]` / `layer_targets[l]` give, per output / input port of block `l`, its
    slice `(name, start, stop)` of the sources / targets. Hashable: a static field under `jit`.
    """

    source_nodes: tuple[Node, ...]
    target_nodes: tuple[Node, ...]
    source_order: tuple[int, ...]
    target_order: tuple[int, ...]
    layer_sources: tuple[tuple[tuple[str, int, int], ...], ...]
    layer_targets: tuple[tuple[tuple[str, int, int], ...], ...]
    target_sources: tuple[tuple[int, ...], ...]
    """For each target, the sources whose component reads it (none for `logits`)."""

    @functools.cached_property
    def sources(self) -> tuple[str, ...]:
        return tuple(str(n) for n in self.source_nodes)

    @functools.cached_property
    def targets(self) -> tuple[str, ...]:
        return tuple(str(n) for n in self.target_nodes)

    @functools.cached_property
    def valid(self) -> np.ndarray:
        """`[n_sources, n_targets]` booleans: which source feeds which target."""
        return np.asarray(self.source_order)[:, None] < np.asarray(self.target_order)[None, :]

    @functools.cached_property
    def node_valid(self) -> np.ndarray:
        """`[n_sources]` booleans: which sources are units of node scores (those with an
        edge)."""
        return self.valid.any(1)

    @property
    def n_layers(self) -> int:
        return len(self.layer_sources)

    @property
    def n_heads(self) -> int:
        """Attention heads per layer."""
        return sum(n.kind == "head" and n.layer == 0 for n in self.source_nodes)

    @property
    def n_sources(self) -> int:
        return len(self.source_nodes)

    @property
    def n_targets(self) -> int:
        return len(self.target_nodes)

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    def edges(self) -> list[tuple[str, str]]:
        """Every edge as `(source, target)`, sources in computation order."""
        return [(self.sources[i], self.targets[j]) for i, j in zip(*np.nonzero(self.valid))]

    def source_index(self, name) -> int:
        """The row of source `name` (a `Node` or its printed name); a clear error names the
        nearest source otherwise."""
        return self._index(str(name), self.sources, "source")

    def target_index(self, name) -> int:
        """The column of target `name` (a `Node` or its printed name)."""
        return self._index(str(name), self.targets, "target")

    def edge_index(self, source, target) -> tuple[int, int]:
        """`(row, column)` of edge `source -> target`; raises if it does not exist."""
        i, j = self.source_index(source), self.target_index(target)
        if not self.valid[i, j]:
            raise ValueError(
                f"no edge {source} -> {target}: {source} is computed after {target} reads "
                f"the residual stream"
            )
        return i, j

    def unit_name(self, index) -> str:
        """`"edge L0H1 -> L1H2.q"` for a cell `(source, target)` of an `[n_sources,
        n_targets]` array, `"node L0H1"` for a cell `(source,)` of an `[n_sources]` one."""
        if len(index) == 1:
            return f"node {self.sources[index[0]]}"
        return f"edge {self.sources[index[0]]} -> {self.targets[index[1]]}"

    def edge_array(self, edges) -> np.ndarray:
        """`[n_sources, n_targets]` booleans, true on `edges` (pairs of nodes or names)."""
        out = np.zeros(self.valid.shape, bool)
        for source, target in edges:
            out[self.edge_index(source, target)] = True
        return out

    def target_layer(self, j: int) -> int:
        """The block whose input target `j` is (`n_layers` for the logits)."""
        node = self.target_nodes[j]
        return self.n_layers if node.layer is None else node.layer

    @staticmethod
    def _index(name, names, what):
        try:
            return names.index(name)
        except ValueError:
            raise ValueError(
                f"unknown {what} {name!r}{nearest(name, names)}; {what}s look like "
                f"{', '.join(names[:3])}, …, {names[-1]}"
            ) from None


class _Recorder:
    """A `Wiring` that records the order of a block's reads and writes (for `graph`)."""

    def __init__(self, widths: dict[str, int], d_model: int):
        self.widths, self.d_model, self.events = widths, d_model, []

    def read(self, port: str):
        self.events.append(("read", port))
        return jnp.zeros((self.widths[port], 1, self.d_model))

    def write(self, output: str, values, bias=None) -> None:
        self.events.append(("write", output))


def graph(model) -> Graph:
    """The edge graph of `model` (a `jaxcirc.Transformer`): heads with separate q/k/v inputs,
    MLPs, embedding and logits, read off each block's `split` form."""
    cfg = model.cfg
    cfg.require_uniform("jaxcirc.graph")
    key = (cfg, tuple(type(b) for b in model.blocks))
    if key not in _GRAPHS:
        _GRAPHS[key] = _build(cfg, model.blocks)
    return _GRAPHS[key]


_GRAPHS: dict = {}  # (config, block classes) -> Graph


def _build(cfg, blocks) -> Graph:
    n_kv = cfg.n_kv_heads or cfg.n_heads
    group = cfg.n_heads // n_kv
    widths = {"q": cfg.n_heads, "k": n_kv, "v": n_kv, "mlp": 1, "heads": cfg.n_heads}
    kv = "head" if n_kv == cfg.n_heads else "kv"
    sources, source_order = [Node("embed")], [0]
    targets, target_order, target_sources = [], [], []
    layer_sources, layer_targets = [], []
    writes = 1  # the embedding
    for layer in range(cfg.n_layers):
        recorder = _Recorder(widths, cfg.d_model)
        eqx.filter_eval_shape(lambda b, r=recorder: b.split(r), blocks[layer])
        outs, ins = [], []
        for event, port in recorder.events:
            if event == "read":
                start = len(targets)
                for i in range(widths[port]):
                    if port == "mlp":
                        targets.append(Node("mlp", layer))
                        target_sources.append(("mlp", layer))
                    elif port == "q" or kv == "head":
                        targets.append(Node("head", layer, i, port))
                        target_sources.append(("heads", layer, i, i + 1))
                    else:
                        targets.append(Node("kv", layer, i, port))
                        target_sources.append(("heads", layer, i * group, (i + 1) * group))
                    target_order.append(writes)
                ins.append((port, start, len(targets)))
            else:
                start = len(sources)
                if port == "heads":
                    sources += [Node("head", layer, h) for h in range(cfg.n_heads)]
                else:
                    sources.append(Node("mlp", layer))
                source_order += [writes] * (len(sources) - start)
                outs.append((port, start, len(sources)))
                writes += 1
        layer_sources.append(tuple(outs))
        layer_targets.append(tuple(ins))
    targets.append(Node("logits"))
    target_order.append(writes)
    index = {n: i for i, n in enumerate(sources)}
    owners = []
    for spec in target_sources:
        if spec[0] == "mlp":
            owners.append((index[Node("mlp", spec[1])],))
        else:
            owners.append(tuple(index[Node("head", spec[1], h)] for h in range(*spec[2:])))
    owners.append(())
    return Graph(
        tuple(sources), tuple(targets), tuple(source_order), tuple(target_order),
        tuple(layer_sources), tuple(layer_targets), tuple(owners),
    )  # fmt: skip
