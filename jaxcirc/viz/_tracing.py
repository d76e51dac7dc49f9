"""The causal-tracing figure of Meng et al. 2022 (ROME, figure 1): one panel per site kind."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._atomic import atomic_write
from ._heatmap import _labels

# kind -> (colormap, what is restored): ROME's purples / greens / reds
STYLE = {
    "resid": ("Purples", "single restored layer within model", "state"),
    "mlp": ("Greens", "center of interval of {w} restored MLP layers", "MLP"),
    "attn": ("Reds", "center of interval of {w} restored attn layers", "Attn"),
}


def trace_labels(result, token_labels: Sequence | None = None) -> list[str]:
    """Token labels for the rows, the subject tokens marked with `*` (as in ROME's plots)."""
    subject = np.asarray(result.subject_mask)
    labels = token_labels if token_labels is not None else result.token_labels
    labels = _labels(labels, subject.shape[0], "token_labels")
    return [f"{label}*" if s else label for label, s in zip(labels, subject)]


def plot_trace(
    result,
    token_labels: Sequence | None = None,
    path: str | os.PathLike = "trace.png",
    *,
    answer: str | None = None,
) -> Path:
    """Draw a `TraceResult` as ROME's figure: a `[position, layer]` panel per kind, as PNG.

    Colours run from the corrupted probability (white) to the panel's maximum; the subject
    tokens carry a `*`. **Returns:** the `Path` written (atomically).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kinds = [k for k in STYLE if k in result.indirect]
    if not kinds:
        raise ValueError(f"result has no grids of kinds {list(STYLE)}; got {list(result.indirect)}")
    rows = trace_labels(result, token_labels)
    low = float(result.corrupt_prob)
    n_layers, seq = np.asarray(result.indirect[kinds[0]]).shape
    height = max(2.5, 0.28 * seq + 1.2)
    width = max(3.5, 0.12 * n_layers + 2.5)
    fig = Figure(figsize=(width * len(kinds), height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    target = f"p({answer.strip()})" if answer else "p(answer)"
    for ax, kind in zip(axes, kinds):
        cmap, x_title, name = STYLE[kind]
        grid = np.asarray(result.indirect[kind], np.float64).T  # [seq, layer]
        high = max(float(np.nanmax(grid)), low + 1e-9)
        image = ax.pcolormesh(grid, cmap=cmap, vmin=low, vmax=high)
        ax.invert_yaxis()
        ax.set_yticks(np.arange(seq) + 0.5, rows, fontsize=8)
        step = max(1, n_layers // 6)
        ticks = np.arange(0, n_layers, step)
        ax.set_xticks(ticks + 0.5, [str(t) for t in ticks], fontsize=8)
        ax.set_title(f"Impact of restoring {name} after corrupted input", fontsize=9)
        ax.set_xlabel(x_title.format(w=result.windows.get(kind, 1)), fontsize=8)
        bar = fig.colorbar(image, ax=ax)
        bar.ax.set_title(target, fontsize=8)
    fig.suptitle(
        f"clean {float(result.clean_prob):.3g}, corrupted {low:.3g} "
        f"(total effect {float(result.total_effect):.3g})",
        fontsize=9,
    )
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
