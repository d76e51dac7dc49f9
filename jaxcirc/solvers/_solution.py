"""Result codes and the `Solution` returned by every solver (the optimistix shape)."""

from __future__ import annotations

import equinox as eqx
from jaxtyping import Array, PyTree


class RESULTS(eqx.Enumeration):
    """Why a solve stopped. Compare with `sol.result == RESULTS.successful`."""

    successful = ""
    max_steps_reached = (
        "The solver reached `max_steps` before its convergence test (duality gap or KKT "
        "residual <= atol + rtol * scale) passed. Raise `max_steps`, loosen `rtol`/`atol`, "
        "or pass `throw=False` to get the last iterate and this code."
    )
    nonfinite = (
        "A non-finite value (NaN or inf) appeared in the objective or the iterate. Check X and Y "
        "for NaN/inf (the Python-level checks are skipped under jit/vmap)."
    )


class Solution(eqx.Module):
    """The output of a solve.

    **Fields:**

    - `value`: the solution (for `lasso`: the coefficients `W`, shape `[d]` or `[d, k]`).
    - `result`: a `RESULTS` member (batched over a path or a `vmap`).
    - `stats`: a dict of arrays: `num_steps`, `objective`, `duality_gap` (NaN where the loss
      has no gap implemented), `kkt_residual`, `lipschitz`, and for a path `alpha`.
    - `intercept`: the fitted intercept (`[]` or `[k]`; zeros without `fit_intercept`).
    """

    value: PyTree[Array]
    result: RESULTS
    stats: dict[str, Array]
    intercept: Array | None = None

    @property
    def coef(self) -> PyTree[Array]:
        """Alias of `value` (scikit-learn's `coef_`, transposed: `[d, k]`)."""
        return self.value
