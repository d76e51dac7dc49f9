"""Distributed Alignment Search (Geiger et al. 2023, "Finding Alignments Between
Interpretable Causal Variables and Distributed Neural Representations").

DAS learns an orthogonal rotation of a site's activations whose first `k` rows span the
subspace that realises a high-level variable's interchange; IIA of that subspace alignment
is reported on held-out pairs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from .._checks import check_float, check_int
from .._finite import check_finite
from ..models._site import SiteRef
from ..models._transformer import Transformer, forward
from ._causal_model import CausalModel
from ._interchange import (
    Alignment,
    Location,
    _batched_logits,
    _counterfactual,
    _location,
    _prepare,
    _readout,
    check_answers,
    iia,
)

__all__ = ["das", "DASResult", "rotation"]


@dataclasses.dataclass(frozen=True)
class DASResult:
    """The learned `rotation` (`[d, d]`, orthogonal), its subspace `basis = rotation[:k]`,
    the `alignment` using it, `train_iia` / `test_iia` and the training `losses`."""

    rotation: np.ndarray
    basis: np.ndarray
    alignment: Alignment
    train_iia: float
    test_iia: float
    losses: np.ndarray


@jax.jit
def rotation(params: Float[Array, "d d"]) -> Float[Array, "d d"]:
    """The orthogonal matrix `expm(W - Wᵀ)` (the exponential map of skew-symmetric matrices)."""
    return jax.scipy.linalg.expm(params - params.T)


def _with_basis(variable, loc, basis) -> Alignment:
    return Alignment({variable: dataclasses.replace(loc, basis=basis)})


@eqx.filter_jit
def _step(params, opt_state, key, lr, model, loc, variable, data, batch, k, readout):
    """One adam step on a random batch of the training pairs (module level: compiled once per
    shape, not once per `das` call)."""
    base, src, labels, answers, train = data
    idx = train[jax.random.choice(key, train.shape[0], (batch,), replace=False)]

    def loss_fn(params):
        logits = _batched_logits(
            model,
            _with_basis(variable, loc, rotation(params)[:k]),
            (variable,),
            base[idx],
            {variable: src[idx]},
            readout,
            orthonormal=True,
        )[:, answers].astype(jnp.float32)  # a bfloat16 model's loss in float32
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels[idx]).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    optimiser = optax.adam(lr)  # built here from the traced rate: no per-call static closure
    updates, opt_state = optimiser.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def das(
    model: Transformer,
    high_level: CausalModel,
    variable: str,
    location: Location | Mapping | str | SiteRef,
    base_tokens: Int[ArrayLike, "n seq"],
    source_tokens: Int[ArrayLike, "n seq"],
    *,
    base_inputs: Mapping[str, ArrayLike],
    source_inputs: Mapping[str, ArrayLike],
    answer_tokens: Int[ArrayLike, " n_outputs"],
    k: int = 1,
    steps: int = 300,
    learning_rate: float = 1e-2,
    batch_size: int = 64,
    test_fraction: float = 0.25,
    readout_position: int = -1,
    key: PRNGKeyArray,
) -> DASResult:
    """Distributed Alignment Search (Geiger et al. 2023) for one variable at one location.

    Learns an orthogonal rotation `R = expm(W - Wᵀ)` of the site's last axis (the exponential
    map, so `R` stays exactly orthogonal) with adam; the interchange replaces the component
    in the span of `R[:k]` by the source's, and the loss is the cross-entropy, over
    `answer_tokens`, of the high-level counterfactual output. Pairs are split into train and
    held-out test sets; IIA is reported on both. The training step is one `eqx.filter_jit`.
    """
    steps = check_int(steps, "das steps", 1)
    batch_size = check_int(batch_size, "das batch_size", 1)
    learning_rate = check_float(learning_rate, "das learning_rate", 0.0, low_open=True)
    test_fraction = check_float(
        test_fraction, "das test_fraction", 0.0, 1.0, low_open=True, high_open=True
    )
    n = np.shape(base_tokens)[0]
    n_test = int(round(n * test_fraction))
    if not 1 <= n_test < n:
        raise ValueError(
            f"test_fraction={test_fraction} of {n} pairs leaves no train or no "
            f"test pairs; expected a fraction giving 1..{n - 1} test pairs"
        )
    loc = _location(location)
    aligned, variables, base, sources, base_in, src_in = _prepare(
        model,
        high_level,
        Alignment({variable: loc}),
        base_tokens,
        source_tokens,
        base_inputs,
        source_inputs,
        [variable],
    )
    loc = aligned.locations[variable][0]
    d = eqx.filter_eval_shape(lambda t: forward(model, t)[1][loc.site], base[0]).shape[-1]
    k = check_int(k, f"das k (the subspace dimension of {loc.site.name}'s last axis)", 1, d)
    answers = check_answers(model, answer_tokens)
    labels = _counterfactual(high_level, variables, base_in, src_in).astype(jnp.int32)
    key_split, key_init, key_train = jax.random.split(key, 3)
    order = jax.random.permutation(key_split, n)
    test, train = order[:n_test], order[n_test:]
    src = sources[variable]
    params = jax.random.normal(key_init, (d, d)) / np.sqrt(d)
    opt_state = optax.adam(0.0).init(params)  # the state does not depend on the rate
    lr = jnp.asarray(learning_rate, jnp.float32)
    batch = min(int(batch_size), int(train.shape[0]))
    readout = _readout(readout_position, base.shape[1])
    data = (base, src, labels, answers, train)
    losses = []
    for step_key in jax.random.split(key_train, steps):
        params, opt_state, loss = _step(
            params, opt_state, step_key, lr, model, loc, variable, data, batch, int(k), readout
        )  # fmt: skip
        losses.append(loss)
    losses = jnp.stack(losses)
    check_finite(
        {"loss": losses, "rotation parameters": params}, "DAS training",
        axes={"loss": ("step",), "rotation parameters": ("row", "column")},
        diagnose=lambda: model.nonfinite_report(base),
    )  # fmt: skip
    rot = rotation(params)
    alignment = _with_basis(variable, loc, rot[:k])

    def score(idx):
        return iia(
            model,
            high_level,
            alignment,
            base[idx],
            src[idx],
            base_inputs={k_: x[idx] for k_, x in base_in.items()},
            source_inputs={k_: x[idx] for k_, x in src_in[variable].items()},
            variables=[variable],
            answer_tokens=answers,
            readout_position=readout_position,
        ).accuracy

    return DASResult(
        np.asarray(rot),
        np.asarray(rot[:k]),
        alignment,
        score(train),
        score(test),
        np.asarray(losses),
    )
