"""Discovery and verification methods, one module each (imported on first use)."""

from .._lazy import lazy_exports

_EXPORTS = {
    "causal_trace": "._tracing",
    "TraceResult": "._tracing",
    "path_patch": "._path_patching",
    "PathPatchResult": "._path_patching",
    "subject_mask": "._tracing",
    "edge_patching": "._edge_attribution",
    "eap": "._edge_attribution",
    "eap_ig": "._edge_attribution",
    "atp": "._edge_attribution",
    "acdc": "._acdc",
    "ACDCResult": "._acdc",
    "learned_mask": "._learned_mask",
    "LearnedMaskResult": "._learned_mask",
    "circuit_lasso": "._circuit_lasso",
    "CircuitLassoResult": "._circuit_lasso",
    "block_lasso": "._circuit_lasso",
    "BlockLassoResult": "._circuit_lasso",
    "feature_ranking": "._circuit_lasso",
    "FeatureRanking": "._circuit_lasso",
    "target_lasso": "._circuit_lasso",
    "CausalModel": "._interchange",
    "Alignment": "._interchange",
    "iia": "._interchange",
    "das": "._das",
    "DASResult": "._das",
    "IIAResult": "._interchange",
    "Location": "._interchange",
    "constant_scores": "._risk_pruning",
    "variance_scores": "._risk_pruning",
    "random_scores": "._risk_pruning",
    "fold": "._risk_pruning",
    "Fold": "._risk_pruning",
    "prune": "._risk_pruning",
    "unit_activations": "._units",
    "unit_shape": "._units",
    "unit_sites": "._units",
    "downstream": "._units",
    "Downstream": "._units",
    "replace": "._units",
    "ReplaceUnits": "._units",
    "compile_abstraction": "._units",
    "abstraction_iia": "._abstraction_iia",
    "AbstractionIIA": "._abstraction_iia",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
