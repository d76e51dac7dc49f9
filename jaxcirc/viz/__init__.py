"""Plots: heatmaps of per-unit results such as patching sweeps."""

from ._heatmap import heatmap as heatmap
from ._heatmap import patching_heatmap as patching_heatmap
from ._heatmap import patching_labels as patching_labels
from ._tracing import plot_trace as plot_trace
