"""IIA tables: one bar per alignment, as in the result tables of Geiger et al. 2021/2023."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .._atomic import atomic_write


def plot_iia(
    scores: Mapping[str, float],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    threshold: float = 0.95,
) -> Path:
    """Draw `{alignment name: IIA}` as a bar table at `path` (PNG, written atomically).

    Bars at or above `threshold` are green, the others grey; the value is written beside
    each bar. Rows keep the order of `scores`, top to bottom. **Returns:** the `Path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not scores:
        raise ValueError("plot_iia needs at least one {alignment: IIA} entry")
    names = [str(n) for n in scores][::-1]
    values = np.asarray([float(v) for v in scores.values()])[::-1]
    bad = [n for n, v in zip(names, values) if not 0.0 <= v <= 1.0]
    if bad:
        raise ValueError(f"IIA of {bad[0]!r} is {scores[bad[0]]}; accuracies lie in [0, 1]")
    fig = Figure(figsize=(7, 0.45 * len(names) + 1), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.barh(names, values, color=["tab:green" if v >= threshold else "tab:gray" for v in values])
    for i, v in enumerate(values):
        ax.text(min(v + 0.01, 0.9), i, f"{v:.3f}", va="center")
    ax.set_xlim(0, 1)
    ax.set_xlabel("interchange-intervention accuracy")
    if title:
        ax.set_title(title)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
