"""`abstraction_iia`: interchange-intervention accuracy of a pruning abstraction against the full
model (Asiaee 2026, arXiv 2602.24266; the protocol of the author's follow-up,
generalised from an MLP's penultimate layer to any site with units).

A trial draws a base input `i` and a source input `j ≠ i` and swaps each KEPT unit of the site
to its value on the source with probability `p`:

- the full model runs on `x_i` with the site set to the swapped activation (pruned units keep
  their base values);
- the abstraction runs on `x_i` with the site set to `Replacement.apply` of the swapped
  activation (kept units swapped, pruned units recomputed by their mechanism) — the same as the
  compiled abstraction on the swapped kept units;
- `Z = 1[argmax differs]` on the output (classifier) or at `position` (transformer), and
  `IIA = 1 − mean Z`.

Choices: for a sequence the same units are swapped at every position (a unit's whole activation
comes from the source); a unit's `d_unit` coordinates are swapped together; every `p` uses the
same trials (base, source, and one uniform draw `u_k` per unit, with unit `k` swapped iff
`keep[k] and u_k < p`), so IIA is compared across `p` on common random numbers. Trial `t` uses
`k_i, k_j, k_u = jax.random.split(jax.random.split(key, n_trials)[t], 3)`,
`i = randint(k_i, 0, n)`, `j = (i + randint(k_j, 1, n)) % n`, `u = uniform(k_u, [n_units])`.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

from .._checks import check_index
from .._finite import check_finite, nonfinite_leaf
from ..models._replacement import Replacement, check_inputs
from ._units import Downstream, Model, downstream, unit_activations, unit_shape


class AbstractionIIA(eqx.Module):
    """The result of `abstraction_iia`.

    - `p`: the swap probabilities; `iia`: `[len(p)]` interchange-intervention accuracy at each.
    - `n_trials`: trials per `p`.
    - `accuracy`: fraction of inputs on which the abstraction's prediction (no intervention)
      equals the full model's; `kl`: mean `KL(full ‖ abstraction)` of the output distributions.
    - `task_accuracy_full`, `task_accuracy_abstraction`: accuracy against `labels` (or `None`).
    """

    site: str = eqx.field(static=True)
    p: tuple[float, ...] = eqx.field(static=True)
    iia: np.ndarray
    n_trials: int = eqx.field(static=True)
    accuracy: float
    kl: float
    task_accuracy_full: float | None = None
    task_accuracy_abstraction: float | None = None

    def table(self) -> str:
        """A plain-text row per `p`."""
        rows = [f"IIA of {self.site} ({self.n_trials} trials per p)"]
        rows += [f"  p={p:<5g} IIA={v:.4f}" for p, v in zip(self.p, self.iia)]
        rows.append(f"  agreement={self.accuracy:.4f}  KL={self.kl:.4g}")
        return "\n".join(rows)


def _nonfinite_source(model, replacement) -> str | None:
    """Which weight of the model or value of the replacement is not finite, if any."""
    for what, tree in (("the model", model), ("the replacement", replacement)):
        found = nonfinite_leaf(tree)
        if found is not None:
            return f"{what} has a non-finite value: {found}"
    return None


def _readout(logits: Array, position: int | None) -> Array:
    return logits if position is None else logits[position]


def _trial(
    full: Downstream,
    replacement: Replacement,
    acts: Float[Array, "n *pos u d"],
    inputs: Array,
    p: Float[Array, " n_p"],
    key: PRNGKeyArray,
    position: int | None,
) -> Bool[Array, " n_p"]:
    """`Z` `[n_p]` for one trial (module docstring: the draws)."""
    n = acts.shape[0]
    k_i, k_j, k_u = jax.random.split(key, 3)
    i = jax.random.randint(k_i, (), 0, n)
    j = (i + jax.random.randint(k_j, (), 1, n)) % n
    u = jax.random.uniform(k_u, (replacement.n_units,))
    base, source, x = acts[i], acts[j], inputs[i]

    def z(p_one):
        swap = (replacement.keep & (u < p_one))[:, None]
        swapped = jnp.where(swap, source, base)
        y_full = _readout(full(swapped, x), position)
        y_abs = _readout(full(replacement.apply(swapped), x), position)
        return y_full.argmax(-1) != y_abs.argmax(-1)

    return jax.vmap(z)(p)


def _trials(full, replacement, acts, inputs, p, keys, position, batch_size):
    """`Z` `[n_chunks * batch_size, n_p]`: `lax.map` over chunks of trials, `vmap` inside."""
    chunks = keys.reshape(-1, batch_size, *keys.shape[1:])
    one = lambda k: _trial(full, replacement, acts, inputs, p, k, position)
    z = jax.lax.map(jax.vmap(one), chunks)
    return z.reshape(-1, p.shape[0])


_run_trials = eqx.filter_jit(_trials)


def _observational(full, replacement, acts, inputs, position):
    """Logits of the full model and the abstraction on the unintervened inputs, `vmap`ped."""

    def one(a, x):
        return (
            _readout(full(a, x), position),
            _readout(full(replacement.apply(a), x), position),
        )

    return jax.vmap(one)(acts, inputs)


_run_observational = eqx.filter_jit(_observational)


def abstraction_iia(
    model: Model,
    replacement: Replacement,
    inputs: ArrayLike,
    *,
    p: float | Sequence[float] = (0.1, 0.2, 0.5),
    n_trials: int = 10_000,
    batch_size: int = 256,
    key: PRNGKeyArray,
    position: int = -1,
    labels: Int[ArrayLike, " n"] | None = None,
) -> AbstractionIIA:
    """IIA of the abstraction `replacement` (one site) against `model` on `inputs`.

    **Arguments:**

    - `model`: a `jaxcirc.models.MLPClassifier` (inputs `[n, n_in]`) or a `Transformer` (tokens
      `[n, seq]`); the full model (it may carry replacements at other sites).
    - `replacement`: the abstraction of one site (`jaxcirc.methods.Replacement`).
    - `p`: swap probabilities in [0, 1]; `n_trials` trials each (the same trials for every `p`).
    - `batch_size`: trials per vmapped chunk (chunks run under `lax.map`; one compiled program).
    - `key`: a `jax.random.key`; `position`: the read-out position for transformers (a
      classifier has one output; ignored there).
    - `labels`: `[n]` true classes (tokens at `position`) for task accuracy of both models.

    **Returns:** an `AbstractionIIA` (module docstring: the protocol and its choices).
    """
    if not isinstance(replacement, Replacement):
        raise TypeError(
            f"replacement must be a jaxcirc.methods.Replacement; got {type(replacement).__name__}"
        )
    shape = unit_shape(model, replacement.site)
    if (replacement.n_units, replacement.d_unit) != shape:
        raise ValueError(
            f"replacement of {replacement.site!r} has [n_units, d_unit] = "
            f"{(replacement.n_units, replacement.d_unit)}; the site has {shape}"
        )
    ps = tuple(float(v) for v in np.atleast_1d(np.asarray(p, dtype=np.float64)))
    bad = [v for v in ps if not 0.0 <= v <= 1.0]
    if not ps or bad:
        raise ValueError(f"p must be probabilities in [0, 1]; got p={p!r}")
    for name, value in (("n_trials", n_trials), ("batch_size", batch_size)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    inputs = check_inputs(model, inputs)
    acts = unit_activations(model, inputs, replacement.site)
    n = acts.shape[0]
    if n < 2:
        raise ValueError(
            f"interchange interventions need at least 2 inputs (a base and a different "
            f"source); got {n}"
        )
    if labels is not None:
        y = np.asarray(labels)
        if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(
                f"labels must have shape [n={n}] of int classes; got {y.dtype} {y.shape}"
            )
    readout = None  # a classifier: one output per example
    if acts.ndim == 4:  # [n, seq, n_units, d_unit]
        seq = acts.shape[1]
        check_index(position, seq, "position", context=f" for sequences of {seq} tokens")
        readout = int(position)
    full = downstream(model, replacement.site)

    batch_size = int(min(batch_size, n_trials))
    n_chunks = -(-n_trials // batch_size)
    keys = jax.random.split(key, n_trials)
    pad = n_chunks * batch_size - n_trials  # padding trials repeat trial 0 and are dropped
    keys = jnp.concatenate([keys, jnp.repeat(keys[:1], pad, axis=0)]) if pad else keys
    z = _run_trials(
        full, replacement, acts, inputs, jnp.asarray(ps, jnp.float32), keys, readout, batch_size
    )
    iia = 1.0 - np.asarray(z[:n_trials]).mean(0)

    logits_full, logits_abs = _run_observational(full, replacement, acts, inputs, readout)
    check_finite(
        {"logits of the full model": logits_full, "logits of the abstraction": logits_abs},
        "abstraction_iia", axes=("example", "class"),
        diagnose=lambda: _nonfinite_source(model, replacement),
    )  # fmt: skip
    if labels is not None:
        n_classes = logits_full.shape[-1]
        check_index(y, n_classes, "label", negative=False, context=f" for {n_classes} classes")
        y = jnp.asarray(y)
    agree = float((logits_full.argmax(-1) == logits_abs.argmax(-1)).mean())
    logp_full = jax.nn.log_softmax(logits_full, -1)
    logp_abs = jax.nn.log_softmax(logits_abs, -1)
    kl = float((jnp.exp(logp_full) * (logp_full - logp_abs)).sum(-1).mean())
    task_full = task_abs = None
    if labels is not None:
        task_full = float((logits_full.argmax(-1) == y).mean())
        task_abs = float((logits_abs.argmax(-1) == y).mean())
    return AbstractionIIA(replacement.site, ps, iia, int(n_trials), agree, kl, task_full, task_abs)
