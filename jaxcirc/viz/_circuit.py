"""Circuit figures: the graph laid out by layer, found edges against the true ones."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .._atomic import atomic_write


def _layout(g) -> dict[str, tuple[float, float]]:
    """Node positions: the embedding at the bottom, a row per layer (heads, then the MLP),
    the logits on top; a target sits at the node it feeds."""
    pos = {"embed": (g.n_heads / 2, 0.0), "logits": (g.n_heads / 2, 2.0 * g.n_layers + 1)}
    for layer in range(g.n_layers):
        for h in range(g.n_heads):
            pos[f"L{layer}H{h}"] = (float(h), 2.0 * layer + 1)
        pos[f"MLP{layer}"] = (g.n_heads / 2, 2.0 * layer + 2)
    return pos


def _node_of(g, target: str) -> str:
    j = g.target_index(target)
    sources = g.target_sources[j]
    return "logits" if not sources else g.sources[sources[0]]


def plot_circuit(
    found: Mapping[str, object] | object,
    truth,
    path: str | os.PathLike,
    *,
    title: str | None = None,
) -> Path:
    """Draw found circuits (a `Circuit` or `EdgeMask`, or `{panel title: circuit}`) against
    `truth` (a `Circuit`, an `EdgeMask` or pairs of edge names): true positives green, false
    positives red, missed true edges grey and dashed. With `truth=None` the found edges are
    drawn in blue. One panel per circuit. **Returns:** the `Path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..graph import EdgeMask

    panels = dict(found) if isinstance(found, Mapping) else {"found": found}
    if not panels:
        raise ValueError("plot_circuit needs at least one found circuit")
    g = next(iter(panels.values())).graph
    known = truth is not None
    truth = () if truth is None else truth
    if not hasattr(truth, "values"):  # pairs of names
        truth = EdgeMask.from_edges(g, truth)
    true = np.asarray(truth.values) > 0.5
    pos = _layout(g)
    fig = Figure(figsize=(3.2 * len(panels), 1.1 * g.n_layers + 2.5), layout="constrained")
    FigureCanvasAgg(fig)
    for k, (name, mask) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), k + 1)
        kept = (np.asarray(mask.values) > 0.5) & g.valid
        for i, j in zip(*np.nonzero(g.valid & (kept | true))):
            (x0, y0), (x1, y1) = pos[g.sources[i]], pos[_node_of(g, g.targets[j])]
            style = (
                ("tab:blue", "-", 1.2) if not known
                else ("tab:green", "-", 1.6) if kept[i, j] and true[i, j]
                else ("tab:red", "-", 1.0) if kept[i, j]
                else ("0.6", "--", 1.0)
            )  # fmt: skip
            ax.plot([x0, x1], [y0, y1], color=style[0], ls=style[1], lw=style[2], alpha=0.8)
        for node, (x, y) in pos.items():
            ax.scatter([x], [y], s=90, color="white", edgecolor="black", zorder=3)
            ax.annotate(node, (x, y), fontsize=6, ha="center", va="bottom",
                        xytext=(0, 5), textcoords="offset points")  # fmt: skip
        tp, fp, fn = int((kept & true).sum()), int((kept & ~true).sum()), int((~kept & true).sum())
        counts = f"TP {tp}  FP {fp}  FN {fn}" if known else f"{int(kept.sum())} edges"
        ax.set_title(f"{name}\n{counts}", fontsize=8)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
