"""Small models trained by the project, shipped with the package, and their tasks.

`induction_model()` is a 2-layer attention-only transformer with an induction head, and
`induction_mlp_model()` the same task learnt by a 2-layer GPT-2-style model with MLPs;
`induction_task(n, half_len, seed)` gives its clean/corrupt prompts and default metric;
`toy_model()` is the planted `S = a + b` network for interchange interventions;
`digits_mlp()` is a 64 → 128 → 128 → 10 ReLU classifier of scikit-learn's digits
(`digits_data()`), the model of the pruning reproduction; `python_model("sparse" | "dense" |
"dense_matched")` are the weight-sparse and dense models pretrained on Python code.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "InductionMetric": "._induction",
    "InductionTask": "._induction",
    "induction_accuracy": "._induction",
    "induction_model": "._induction",
    "induction_mlp_model": "._induction",
    "induction_task": "._induction",
    "toy_model": "._toy_sum",
    "MLPClassifier": "._digits",
    "DigitsData": "._digits",
    "digits_mlp": "._digits",
    "digits_data": "._digits",
    "digits_accuracy": "._digits",
    "python_model": "._python_models",
    "python_models_record": "._python_models",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
