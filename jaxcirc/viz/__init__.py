"""Plots: patching and tracing heatmaps, path-patching maps, IIA tables, circuits, curves (e.g.
faithfulness by circuit size), SAE feature dashboards."""

from ._circuit import plot_circuit as plot_circuit
from ._dashboard import Dashboard as Dashboard
from ._dashboard import feature_dashboard as feature_dashboard
from ._heatmap import heatmap as heatmap
from ._heatmap import patching_heatmap as patching_heatmap
from ._heatmap import patching_labels as patching_labels
from ._iia import plot_iia as plot_iia
from ._path_patching import plot_path_patching as plot_path_patching
from ._report import plot_curves as plot_curves
from ._tracing import plot_trace as plot_trace
