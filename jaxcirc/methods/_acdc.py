"""ACDC: automatic circuit discovery by greedy edge removal (Conmy et al. 2023, "Towards
Automated Circuit Discovery for Mechanistic Interpretability").

Targets are visited from the logits back to the embeddings; each incoming edge of a live
target is removed for good if the divergence from the clean model grows by less than
`threshold`. A target is live while its node still reaches the logits; edges into dead nodes
are removed without a test, as ACDC does. The search is a host loop over one compiled
"divergence with this edge mask" function: masks are arrays, so nothing recompiles. The method
value is `ACDC(threshold=...)` (`jaxcirc.methods.discover`); `acdc(...)` is its function form.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_choices, check_float
from .._finite import check_finite
from ..graph import Circuit, Scores, ablation_values, graph
from ..graph._masked import ABLATIONS, _masked_logits, nonfinite_ablated
from ..metrics._check import check_metric
from ..metrics._divergence import kl_divergence
from ._discover import DiscoveryMethod
from ._task_args import task_arguments

__all__ = ["ACDC", "acdc", "kl_divergence"]


class ACDC(DiscoveryMethod):
    """ACDC with divergence `divergence(masked_logits, clean_logits)` (default: KL).

    `threshold`: τ, the largest divergence increase an edge may cause and still be removed;
    `ablation`: what a removed edge carries (`"corrupt"`, `"mean"`, `"zero"`); `progress`: a
    progress bar over targets. The circuit holds the kept edges; its scores are, per tested
    edge, the divergence increase its removal caused (signed; edges removed untested, into
    dead nodes, score 0); `info` has the final `divergence` and `n_tested`.
    """

    threshold: float = 0.01
    divergence: Callable = kl_divergence
    ablation: str = "corrupt"
    progress: bool = False

    def __check_init__(self):
        check_float(self.threshold, "ACDC threshold", 0.0)
        check_choices((self.ablation,), ABLATIONS, "ablation", one="ablation")
        if not callable(self.divergence):
            raise TypeError(
                f"divergence must be a function (logits, clean_logits) -> scalar such as "
                f"jaxcirc.metrics.kl_divergence; got {self.divergence!r}"
            )

    def __call__(self, model, clean, corrupt=None) -> Circuit:
        clean, corrupt, _ = task_arguments(clean, corrupt, None, needs_metric=False)
        return _acdc(model, clean, corrupt, self)


def acdc(model, clean, corrupt=None, **hyperparameters) -> Circuit:
    """`ACDC(**hyperparameters)(model, clean, corrupt)`: the function form."""
    return ACDC(**hyperparameters)(model, clean, corrupt)


@eqx.filter_jit
def _evaluate(model, g, clean, weights, ablated, divergence, clean_logits):
    return divergence(_masked_logits(model, g, clean, weights, ablated), clean_logits)


def _acdc(model, clean, corrupt, method: ACDC) -> Circuit:
    threshold, divergence = float(method.threshold), method.divergence
    g = graph(model)
    clean = model.check_tokens(clean, name="clean", ndim=2)
    logits_shape = (*clean.shape, model.cfg.d_vocab)
    check_metric(lambda x: divergence(x, x), logits_shape, what="divergence")
    ablated = ablation_values(model, clean, corrupt, method.ablation, g)
    clean_logits = jax.vmap(model)(clean)

    def evaluate(weights):
        return _evaluate(model, g, clean, weights, ablated, divergence, clean_logits)

    def diagnose():
        return model.nonfinite_report(clean) or nonfinite_ablated(ablated, g)

    weights = np.asarray(g.valid, np.float32)
    scores = np.zeros(g.valid.shape, np.float32)
    current = float(evaluate(jnp.asarray(weights)))
    check_finite(current, "ACDC divergence of the full model from itself", diagnose=diagnose)
    tested = 0
    targets = sorted(range(g.n_targets), key=lambda j: -g.target_order[j])
    bar = None
    if method.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(targets), desc="ACDC", unit="target")
    for j in targets:
        live = j == g.n_targets - 1 or any((weights[s] > 0).any() for s in g.target_sources[j])
        sources = [i for i in np.flatnonzero(g.valid[:, j])][::-1]
        for i in sources:
            if not live:
                weights[i, j] = 0.0
                continue
            weights[i, j] = 0.0
            trial = float(evaluate(jnp.asarray(weights)))
            if not np.isfinite(trial):
                check_finite(
                    trial, f"ACDC divergence with {g.unit_name((i, j))} removed",
                    diagnose=diagnose,
                )  # fmt: skip
            tested += 1
            scores[i, j] = trial - current
            if trial - current < threshold:
                current = trial
            else:
                weights[i, j] = 1.0
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    info = {"divergence": current, "n_tested": tested}
    return Circuit(jnp.asarray(weights > 0), g, Scores.from_effects(scores, g), info)
