"""Result codes and the `Solution` returned by every solver (the optimistix shape)."""

from __future__ import annotations

import equinox as eqx
from jaxtyping import Array, PyTree


class RESULTS(eqx.Enumeration):
    """Why a solve stopped. `successful` and `precision_floor` are converged (`sol.converged`);
    the others are failures."""

    successful = ""
    precision_floor = (
        "Converged to the working precision: the duality gap (or KKT residual) is at the "
        "smallest value the rounding error of the gradient lets the solver certify in this "
        "dtype (`stats['precision_floor']`), above `atol + rtol * scale`. The gap still bounds "
        "the objective's distance from the optimum. Use float64 for a tighter certificate."
    )
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
      has no gap implemented), `kkt_residual`, `precision_floor` (the smallest gap, or KKT
      residual for the other losses, the dtype can certify), `lipschitz`, and for a path
      `alpha`.
    - `intercept`: the fitted intercept (`[]` or `[k]`; zeros without `fit_intercept`).
    """

    value: PyTree[Array]
    result: RESULTS
    stats: dict[str, Array]
    intercept: Array | None = None

    @property
    def converged(self):
        """True (per path point / vmapped solve) where `result` is `successful` or
        `precision_floor`."""
        return (self.result == RESULTS.successful) | (self.result == RESULTS.precision_floor)

    @property
    def coef(self) -> PyTree[Array]:
        """Alias of `value` (scikit-learn's `coef_`, transposed: `[d, k]`)."""
        return self.value
