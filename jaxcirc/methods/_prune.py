"""`prune_model`: interventional-risk pruning of a whole model, site by site (Asiaee 2026,
"Efficient Discovery of Approximate Causal Abstractions via Neural Mechanism Sparsification",
arXiv 2602.24266).

For each site, from the last in computation order to the first (Asiaee 2026):

1. read the site's unit activations `a` on the calibration inputs from the *current* model —
   the full model with the replacements chosen so far (later sites) applied;
2. measure the per-sample gradient `g` and diagonal curvature `h` of the loss with respect to
   `a` (`jaxcirc.solvers.unit_curvature`, `fn = downstream(current, site)`);
3. flatten the rows (a transformer's row is one `(example, position)`) and call
   `jaxcirc.methods.prune`; with `schedule="iterative"`, `prune` re-measures `g` and `h`
   between blocks of removals on the current model with this site's replacement so far
   applied (the site's activations do not change: they depend only on earlier layers).

Choices (ours, where the paper leaves the procedure open):

- **Loss**: with `labels` the task cross-entropy (summed over labelled positions; `-1` marks a
  position to ignore, e.g. the first half of an induction prompt); without labels the KL from
  the current model's own output distribution at every position (`g = 0`). For the first
  site processed that is the KL to the full model; for the next ones it is the KL to the
  abstraction built so far, whose output is the reference the next site must preserve.
- **Curvature**: default `"ggn"` (exact Gauss–Newton diagonal, one backward per logit) for
  the digits `MLPClassifier` (10 logits), `"fisher"` (Monte-Carlo GGN, `probes` backward
  passes, unbiased and non-negative) for a `Transformer`, whose `positions × vocabulary`
  logits make the exact GGN slow (the induction model's 32 × 64 logits per example:
  2048 backward passes, ~50 s for the heads of one layer on 2 CPU cores, against ~0.1 s).
- **Rescoring** (`schedule="iterative"`): `g, h` of the function `a ↦ downstream(current,
  site)(replacement.apply(a), x)`, so a kept unit's curvature includes the paths through the
  units folded onto it.
- `scores` are the ranking scores of the first measurement: constant scores (predicted risk
  increase of the damped constant) for `"constant"`, `"fold"` and `"auto"`, activation
  variance for `"variance"`, the random draws for `"random"`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from ..models._replacement import Replacement, check_inputs, default_curvature
from ..models._site import nearest
from ..solvers._curvature import unit_curvature
from ._risk_pruning import (
    METHODS,
    SCHEDULES,
    constant_scores,
    prune,
    random_scores,
    variance_scores,
)
from ._units import (
    Downstream,
    Model,
    compile_abstraction,
    downstream,
    replace,
    unit_activations,
    unit_shape,
    unit_sites,
)

__all__ = ["prune_model", "PruneResult", "CURVATURES", "default_curvature", "n_params"]

CURVATURES = ("ggn", "exact", "fisher", "hutchinson")


def n_params(model: Model) -> int:
    """Number of parameters: the sizes of all floating-point arrays of `model`."""
    leaves = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array))
    return int(sum(x.size for x in leaves))


class PruneResult(eqx.Module):
    """What `prune_model` returns.

    - `replacements`: one `Replacement` per site, in the order the sites were given.
    - `abstraction`: the compiled, smaller model (`compile_abstraction`).
    - `masked`: the full model with every replacement applied (`replace`); its outputs equal
      the abstraction's.
    - `scores`: `{site: [n_units]}` ranking scores (module docstring).
    - `n_params_before`, `n_params_after`: parameters of the model and of the abstraction.
    - `method`, `schedule`, `curvature`, `loss`: the settings used.
    """

    replacements: tuple[Replacement, ...]
    abstraction: Model
    masked: Model
    scores: dict[str, Float[Array, " n_units"]]
    n_params_before: int = eqx.field(static=True)
    n_params_after: int = eqx.field(static=True)
    method: str = eqx.field(static=True)
    schedule: str = eqx.field(static=True)
    curvature: str = eqx.field(static=True)
    loss: str = eqx.field(static=True)

    def summary(self) -> str:
        """A plain-text report: units kept / constant / folded per site, parameter counts."""
        rows = [
            f"interventional-risk pruning ({self.method}, {self.schedule}; curvature "
            f"{self.curvature}, loss {self.loss})"
        ]
        for r in self.replacements:
            s = r.summary()
            rows.append(
                f"  {r.site}: kept {s['kept']}/{r.n_units}, constant {s['constant']}, "
                f"fold {s['fold']}"
            )
        ratio = self.n_params_after / max(1, self.n_params_before)
        rows.append(f"  parameters: {self.n_params_before} -> {self.n_params_after} ({ratio:.1%})")
        return "\n".join(rows)


class _Rescored(eqx.Module):
    """`f(a, x) = downstream(a with this site's replacement applied, x)`: a pytree, so the
    curvature program compiles once for every replacement of the same sizes."""

    down: Downstream
    replacement: Replacement

    def __call__(self, a, x):
        return self.down(self.replacement.apply(a), x)


def _keep_fractions(keep_fraction, sites: tuple[str, ...]) -> dict[str, float]:
    if isinstance(keep_fraction, Mapping):
        extra = [s for s in keep_fraction if s not in sites]
        if extra:
            raise ValueError(
                f"keep_fraction names site {extra[0]!r}, which is not in sites"
                f"{nearest(extra[0], sites)}"
            )
        missing = [s for s in sites if s not in keep_fraction]
        if missing:
            raise ValueError(f"keep_fraction has no entry for site {missing[0]!r}")
        values = dict(keep_fraction)
    elif isinstance(keep_fraction, Sequence) and not isinstance(keep_fraction, str):
        if len(keep_fraction) != len(sites):
            raise ValueError(
                f"keep_fraction has {len(keep_fraction)} entries; give one per site "
                f"({len(sites)}: {list(sites)}) or a single number"
            )
        values = dict(zip(sites, keep_fraction))
    else:
        values = {s: keep_fraction for s in sites}
    out = {}
    for s, v in values.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"keep_fraction for {s!r} must be a number in (0, 1]; got {v!r}")
        if not (math.isfinite(f) and 0.0 < f <= 1.0):
            raise ValueError(
                f"keep_fraction for {s!r} must be in (0, 1] (the fraction of units kept); got {v!r}"
            )
        out[s] = f
    return out


def _check_labels(labels, expected: tuple[int, ...]):
    """Labels index the model's outputs without their class axis: `[n]` for a classifier,
    `[n, seq]` for a sequence model (`-1` marks a position to ignore)."""
    if labels is None:
        return None
    y = jnp.asarray(labels)
    if y.shape != expected:
        what = "[n]" if len(expected) == 1 else "[n, seq] (-1: ignore)"
        raise ValueError(f"labels must have shape {what} = {expected}; got {y.shape}")
    return y


def _finite_units(a: np.ndarray, site: str) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        idx = np.argwhere(bad)
        units = sorted({int(u) for u in idx[:, -2]})
        raise ValueError(
            f"activations of site {site!r} are not finite at unit {units[0]} (example "
            f"{int(idx[0, 0])}; units with non-finite values: {units[:10]}); check the "
            f"model's weights before this site"
        )


def prune_model(
    model: Model,
    inputs: ArrayLike,
    *,
    sites: str | Sequence[str],
    keep_fraction: float | Sequence[float] | Mapping[str, float],
    labels: Int[ArrayLike, "n ..."] | None = None,
    method: str = "fold",
    loss: str | None = None,
    curvature: str | None = None,
    schedule: str = "one-shot",
    probes: int = 8,
    key: PRNGKeyArray | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    **prune_kwargs,
) -> PruneResult:
    """Prune the units of one or more sites of `model` by interventional risk and compile the
    abstraction (Asiaee 2026, arXiv 2602.24266; choices in the module
    docstring).

    **Arguments:**

    - `model`: a `jaxcirc.models.MLPClassifier` (inputs `[n, n_in]`, sites `"hidden.{l}"`) or a
      `Transformer` (tokens `[n, seq]`, sites `blocks.{l}.mlp.hook_post` (neurons) and
      `blocks.{l}.attn.hook_z` (heads)). `inputs` are the calibration set.
    - `sites`: a site or several; processed from last to first in computation order.
    - `keep_fraction`: in (0, 1], one number, one per site, or `{site: fraction}`.
    - `labels`: `[n]` classes (`MLPClassifier`) or `[n, seq]` next tokens with `-1` where
      ignored (`Transformer`); the loss is then the task cross-entropy, else the KL.
    - `method`: `"fold"`, `"constant"`, `"auto"`, `"variance"` or `"random"` (needs `key`);
      `schedule`: `"one-shot"` or `"iterative"` (re-measured between blocks).
    - `loss`: `"ce"` or `"kl"` (default: `"ce"` with labels, else `"kl"`); `curvature`:
      `"ggn"`, `"exact"`, `"fisher"` or `"hutchinson"` (default `default_curvature(model)`),
      `probes` for the last two; `batch_size` calibration examples per curvature chunk.
    - `key`: for `"fisher"`, `"hutchinson"` and `"random"` (default `jax.random.key(0)`).
    - `prune_kwargs`: `block`, `damping`, `clip`, `r`, `ridge` of `jaxcirc.methods.prune`.

    **Returns:** a `PruneResult` (replacements, the compiled `abstraction`, the `masked`
    full model, scores, parameter counts, `summary()`).
    """
    if method not in METHODS:
        raise ValueError(
            f"unknown method {method!r}{nearest(method, METHODS)}; expected one of {METHODS}"
        )
    if schedule not in SCHEDULES:
        raise ValueError(
            f"unknown schedule {schedule!r}{nearest(schedule, SCHEDULES)}; expected one of "
            f"{SCHEDULES}"
        )
    curvature = default_curvature(model) if curvature is None else curvature
    if curvature not in CURVATURES:
        raise ValueError(
            f"unknown curvature {curvature!r}{nearest(curvature, CURVATURES)}; expected one of "
            f"{CURVATURES}"
        )
    bad = sorted(set(prune_kwargs) - {"block", "damping", "clip", "r", "ridge"})
    if bad:
        raise TypeError(
            f"prune_model got an unexpected keyword {bad[0]!r}"
            f"{nearest(bad[0], ('block', 'damping', 'clip', 'r', 'ridge'))}"
        )
    sites = (sites,) if isinstance(sites, str) else tuple(sites)
    if not sites:
        raise ValueError("sites is empty; name at least one site (see jaxcirc.methods.unit_sites)")
    order = unit_sites(model)
    for s in sites:
        if not isinstance(s, str):
            raise ValueError(f"sites must be names (str); got {s!r}")
        if s not in order:
            unit_shape(model, s)  # raises the model's own error (nearest name) if unknown
            raise ValueError(
                f"site {s!r} has no units{nearest(s, order)}; sites with units: {list(order)}"
            )
    if len(set(sites)) != len(sites):
        dup = next(s for s in sites if sites.count(s) > 1)
        raise ValueError(f"site {dup!r} is listed twice; give each site once")
    fractions = _keep_fractions(keep_fraction, sites)
    if key is None:
        key = jax.random.key(0)

    x = check_inputs(model, inputs)
    n = x.shape[0]
    if n < 1:
        raise ValueError("the calibration set is empty (n = 0 inputs)")
    per_class = jax.eval_shape(jax.vmap(model), x).shape[:-1]  # [n, *positions]
    rows_per_example = math.prod(per_class[1:])
    y = _check_labels(labels, per_class)
    if loss is None:
        loss = "kl" if y is None else "ce"
    if method in ("fold", "auto"):  # fail before any curvature is computed
        r = int(prune_kwargs.get("r", 8))
        for s in sites:
            u, d = unit_shape(model, s)
            need = max(1, min(r, u - 1)) * d + 1
            rows = n * rows_per_example
            if rows < need:
                raise ValueError(
                    f"folding site {s!r} ({u} units of d_unit = {d}) needs at least "
                    f"{need} calibration rows (r = {min(r, u - 1)} parents x d_unit + the "
                    f"intercept); got {rows} ({n} inputs x {rows_per_example} positions)"
                )

    def measure(current: Model, site: str, fn, a, k):
        """`(a, g, h)` flattened to `[rows, n_units, d_unit]`; variance and random pruning read
        the activations alone, so their `g` and `h` are zeros (no curvature is computed)."""
        u, d = a.shape[-2:]
        if method in ("variance", "random"):
            flat = a.reshape(-1, u, d)
            return flat, jnp.zeros_like(flat), jnp.zeros_like(flat)
        try:
            c = unit_curvature(
                fn, a, x, y, loss=loss, method=curvature, probes=probes, key=k,
                batch_size=batch_size, progress=progress,
            )  # fmt: skip
        except ValueError as e:
            raise ValueError(f"site {site!r}: {e}") from None
        return tuple(t.reshape(-1, u, d) for t in (a, c.grad, c.curv))

    done: dict[str, Replacement] = {}
    scores: dict[str, Array] = {}
    for site in sorted(sites, key=order.index, reverse=True):
        current = replace(model, tuple(done.values())) if done else model
        k_site = jax.random.fold_in(key, order.index(site))
        k_curv, k_rand = jax.random.split(k_site)
        a = unit_activations(current, x, site)
        _finite_units(np.asarray(a), site)
        down = downstream(current, site)
        flat_a, g, h = measure(current, site, down, a, k_curv)
        u = flat_a.shape[1]
        if method == "variance":
            scores[site] = variance_scores(flat_a)[0]
        elif method == "random":
            scores[site] = random_scores(u, k_rand)
        else:
            kw = {k: prune_kwargs[k] for k in ("damping", "clip") if k in prune_kwargs}
            scores[site] = constant_scores(flat_a, g, h, **kw)[0]
        rescore = None
        if schedule == "iterative":
            step = [0]

            def rescore(rep, site=site, down=down, a=a):
                step[0] += 1
                k = jax.random.fold_in(k_curv, step[0])
                return measure(current, site, _Rescored(down, rep), a, k)

        try:
            done[site] = prune(
                flat_a, g, h, fractions[site], site=site, method=method, schedule=schedule,
                rescore=rescore, key=k_rand, **prune_kwargs,
            )  # fmt: skip
        except ValueError as e:
            raise ValueError(f"site {site!r}: {e}") from None
    reps = tuple(done[s] for s in sites)
    abstraction = compile_abstraction(model, reps)
    return PruneResult(
        replacements=reps,
        abstraction=abstraction,
        masked=replace(model, reps),
        scores={s: scores[s] for s in sites},
        n_params_before=n_params(model),
        n_params_after=n_params(abstraction),
        method=method,
        schedule=schedule,
        curvature=curvature,
        loss=loss,
    )
