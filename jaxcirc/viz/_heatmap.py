"""Heatmaps of per-unit results (patching sweeps, attributions), written as PNG files.

Matplotlib is used through its object API (`Figure` + the Agg canvas): no `pyplot`, no global
backend or figure state, safe in scripts, tests and threads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from jaxtyping import ArrayLike

from .._atomic import atomic_write

# `per` of `jaxcirc.patching.sweep` -> the axes of its result after the layer axis
PATCHING_AXES = {
    "position": ("position",),
    "head": ("head",),
    "position_head": ("position", "head"),
    "head_position": ("head", "position"),
}


def _labels(labels: Sequence | None, n: int, axis: str) -> list[str]:
    if labels is None:
        return [str(i) for i in range(n)]
    labels = [str(label) for label in labels]
    if len(labels) != n:
        what = "columns" if axis == "x_labels" else "rows"
        raise ValueError(f"{axis} has {len(labels)} labels for {n} {what}")
    return labels


def heatmap(
    values: ArrayLike,
    *,
    path: str | os.PathLike,
    x_labels: Sequence | None = None,
    y_labels: Sequence | None = None,
    title: str | None = None,
    x_title: str | None = None,
    y_title: str | None = None,
    colorbar_label: str | None = None,
    annotate: bool | None = None,
) -> Path:
    """Draw a `[rows, columns]` array as a PNG heatmap at `path` (written atomically).

    **Arguments:**

    - `values`: a 2-D array; NaNs are drawn blank.
    - `path`: where the PNG goes; parent folders are created. (Keyword only argument.)
    - `x_labels`, `y_labels`: one label per column (e.g. tokens) / row (e.g. layers).
    - `title`, `x_title`, `y_title`, `colorbar_label`: texts.
    - `annotate`: write each value in its cell; by default for at most 16 columns and 64 cells.

    The colormap is diverging (`RdBu`) and centred at 0: red is positive, blue negative, and
    the colour limits are `±max|values|`.

    **Returns:** the `Path` written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or 0 in values.shape:
        raise ValueError(
            f"heatmap needs a non-empty 2-D array [rows, columns]; got shape {values.shape}"
        )
    rows, cols = values.shape
    x_labels = _labels(x_labels, cols, "x_labels")
    y_labels = _labels(y_labels, rows, "y_labels")
    finite = np.abs(values[np.isfinite(values)])
    limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    if annotate is None:
        annotate = rows * cols <= 64 and cols <= 16

    longest = max(len(label) for label in x_labels)
    width = min(40.0, max(4.5, 0.3 * cols + 2.5))
    height = min(40.0, max(2.5, 0.35 * rows + 1.5 + 0.06 * longest))
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(
        values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest"
    )
    rotation = 90 if longest > 2 or cols > 16 else 0
    ax.set_xticks(np.arange(cols), x_labels, rotation=rotation, fontsize=8)
    ax.set_yticks(np.arange(rows), y_labels, fontsize=8)
    if annotate:
        for (r, c), v in np.ndenumerate(values):
            if np.isfinite(v):
                color = "white" if abs(v) > 0.6 * limit else "black"
                ax.text(c, r, f"{v:.2g}", ha="center", va="center", fontsize=7, color=color)
    if title:
        ax.set_title(title, fontsize=10)
    if x_title:
        ax.set_xlabel(x_title)
    if y_title:
        ax.set_ylabel(y_title)
    bar = fig.colorbar(image, ax=ax)
    if colorbar_label:
        bar.set_label(colorbar_label)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def patching_labels(
    values: ArrayLike, per: str, *, position_labels: Sequence | None = None
) -> tuple[np.ndarray, dict[str, list[str]], list[str], list[str]]:
    """Axis labels for a `jaxcirc.patching.sweep` result, and its 2-D form for a heatmap.

    **Returns:** `(matrix, axes, x_labels, y_labels)`: `axes` names every axis of `values`
    (`{"layer": ["L0", …], "position": […], "head": ["H0", …]}`); `matrix` has layer rows
    and position or head columns (rows `L{l}H{h}` for `"position_head"` and `"head_position"`).
    """
    values = np.asarray(values)
    if per not in PATCHING_AXES:
        raise ValueError(f"unknown per={per!r}; choices: {sorted(PATCHING_AXES)}")
    names = ("layer", *PATCHING_AXES[per])
    if values.ndim != len(names):
        raise ValueError(f"a per={per!r} result has axes {names}; got shape {values.shape}")
    prefix = {"layer": "L", "head": "H"}
    axes = {
        name: [f"{prefix[name]}{i}" for i in range(size)]
        if name != "position"
        else _labels(position_labels, size, "position_labels")
        for name, size in zip(names, values.shape)
    }
    if per == "position_head":
        layers, seq, heads = values.shape
        matrix = values.transpose(0, 2, 1).reshape(layers * heads, seq)
        rows = [f"{layer}{head}" for layer in axes["layer"] for head in axes["head"]]
        return matrix, axes, axes["position"], rows
    if per == "head_position":
        layers, heads, seq = values.shape
        rows = [f"{layer}{head}" for layer in axes["layer"] for head in axes["head"]]
        return values.reshape(layers * heads, seq), axes, axes["position"], rows
    return values, axes, axes[names[1]], axes["layer"]


def patching_heatmap(
    values: ArrayLike,
    per: str,
    *,
    path: str | os.PathLike,
    position_labels: Sequence | None = None,
    title: str | None = None,
    metric_label: str = "metric",
) -> Path:
    """`heatmap` of a patching result with layer rows and position / head columns."""
    matrix, _, x_labels, y_labels = patching_labels(values, per, position_labels=position_labels)
    return heatmap(
        matrix,
        path=path,
        x_labels=x_labels,
        y_labels=y_labels,
        title=title,
        x_title="head" if per == "head" else "position",
        y_title="layer, head" if per in ("position_head", "head_position") else "layer",
        colorbar_label=metric_label,
    )
