"""Small models trained by the project, shipped with the package, and their tasks.

`induction_model()` is a 2-layer attention-only transformer with an induction head;
`induction_task(n, half_len, seed)` gives its clean/corrupt prompts and default metric;
`toy_model()` is the planted `S = a + b` network for interchange interventions.
"""

import importlib

_EXPORTS = {
    "InductionMetric": "._induction",
    "InductionTask": "._induction",
    "induction_accuracy": "._induction",
    "induction_model": "._induction",
    "induction_task": "._induction",
    "toy_model": "._toy_sum",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Imported lazily, so `python -m jaxcirc.zoo._induction` runs the module only once.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'jaxcirc.zoo' has no attribute {name!r}")


def __dir__():
    return __all__
