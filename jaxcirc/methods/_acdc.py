"""ACDC: automatic circuit discovery by greedy edge removal (Conmy et al. 2023, "Towards
Automated Circuit Discovery for Mechanistic Interpretability").

Targets are visited from the logits back to the embeddings; each incoming edge of a live
target is removed for good if the divergence from the clean model grows by less than
`threshold`. A target is live while its node still reaches the logits; edges into dead nodes
are removed without a test, as ACDC does. The search is a host loop over one compiled
"divergence with this edge mask" function: masks are arrays, so nothing recompiles.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ..graph import EdgeMask, ablation_values, graph
from ..graph._masked import _masked_logits
from ._task_args import task_arguments


def kl_divergence(
    logits: Float[Array, "batch seq d_vocab"], clean_logits: Float[Array, "batch seq d_vocab"]
) -> Float[Array, ""]:
    """Mean over batch and positions of `KL(clean || logits)`: ACDC's default divergence."""
    p = jax.nn.log_softmax(clean_logits.astype(jnp.float32), -1)
    q = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    return (jnp.exp(p) * (p - q)).sum(-1).mean()


class ACDCResult(eqx.Module):
    """`circuit`: the kept edges (1) as an `EdgeMask`; `scores`: for each tested edge the
    divergence increase its removal caused (kept edges score ≥ `threshold`; edges removed
    untested, into dead nodes, score 0); `divergence`: of the final circuit; `n_tested`."""

    circuit: EdgeMask
    scores: EdgeMask
    divergence: float
    n_tested: int


def acdc(
    model,
    clean: Int[Array, "batch seq"],
    corrupt: Int[Array, "batch seq"] | None = None,
    *,
    threshold: float = 0.01,
    divergence: Callable = kl_divergence,
    ablation: str = "corrupt",
    progress: bool = False,
) -> ACDCResult:
    """ACDC with divergence `divergence(masked_logits, clean_logits)` (default: KL).

    **Arguments:** `threshold`: τ, the largest divergence increase an edge may cause and
    still be removed; `ablation`: what a removed edge carries (`"corrupt"`, `"mean"`,
    `"zero"`); `progress`: a progress bar over targets.
    """
    if not float(threshold) >= 0:
        raise ValueError(f"threshold must be a number >= 0; got {threshold}")
    clean, corrupt, _ = task_arguments(clean, corrupt, None, needs_metric=False)
    g = graph(model)
    clean = jnp.asarray(clean)
    ablated = ablation_values(model, clean, corrupt, ablation, g)
    clean_logits = jax.vmap(model)(clean)

    @eqx.filter_jit
    def evaluate(weights):
        return divergence(_masked_logits(model, g, clean, weights, ablated), clean_logits)

    weights = np.asarray(g.valid, np.float32)
    scores = np.zeros(g.valid.shape, np.float32)
    current = float(evaluate(jnp.asarray(weights)))
    tested = 0
    targets = sorted(range(g.n_targets), key=lambda j: -g.target_order[j])
    bar = None
    if progress:
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
    return ACDCResult(
        EdgeMask(jnp.asarray(weights), g), EdgeMask(jnp.asarray(scores), g), current, tested
    )
