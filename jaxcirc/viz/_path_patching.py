"""The path-patching map of Wang et al. 2023 ("Interpretability in the Wild", figure 3 style):
senders as rows, receivers as columns, each cell the change of the metric."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._heatmap import heatmap

SCALES = ("effect", "normalized", "value")


def plot_path_patching(
    result,
    path: str | os.PathLike = "path_patching.png",
    *,
    scale: str = "effect",
    title: str | None = None,
    metric_label: str = "metric",
    annotate: bool | None = None,
) -> Path:
    """Draw a `PathPatchResult` as a `[senders, receivers]` heatmap PNG (written atomically).

    **Arguments:**

    - `result`: what `jaxcirc.methods.path_patch` returned.
    - `path`: where the PNG goes; parent folders are created.
    - `scale`: `"effect"` (patched minus baseline metric, the default), `"normalized"` (as a
      fraction of the total effect, corrupt minus clean) or `"value"` (the patched metric).
      Pairs without a path (the sender after the receiver) are blank.
    - `title`, `metric_label`: texts; `annotate`: write the values in the cells (default:
      small maps only).

    **Returns:** the `Path` written.
    """
    for field in ("values", "senders", "receivers", "effects"):
        if not hasattr(result, field):
            raise TypeError(
                f"plot_path_patching needs a PathPatchResult (from jaxcirc.methods.path_patch); "
                f"got {type(result).__name__}"
            )
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choices: {SCALES}")
    values = {
        "effect": lambda: result.effects,
        "normalized": result.normalized,
        "value": lambda: result.values,
    }[scale]()
    values = np.asarray(values, np.float64)
    direction = getattr(result, "direction", "noise")
    what = (
        "corrupted sender into clean run"
        if direction == "noise"
        else "clean sender into corrupted run"
    )
    if title is None:
        title = (
            f"Path patching ({what}); clean {float(result.clean):.3g}, "
            f"corrupt {float(result.corrupt):.3g}"
        )
    label = {
        "effect": f"Δ {metric_label}",
        "normalized": f"Δ {metric_label} / total effect",
        "value": metric_label,
    }[scale]
    return heatmap(
        values,
        path=path,
        x_labels=result.receivers,
        y_labels=result.senders,
        title=title,
        x_title="receiver",
        y_title="sender",
        colorbar_label=label,
        annotate=annotate,
    )
