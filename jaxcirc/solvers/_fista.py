"""FISTA (Beck & Teboulle 2009) with adaptive restart (O'Donoghue & Candès 2015), in the
optimistix shape: a solver value holding hyperparameters, `init/step/terminate`, and one
`lax.while_loop` driver with a hard step limit."""

from __future__ import annotations

import abc
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ._problem import Problem
from ._solution import RESULTS

_STALL = 10  # convergence tests without a 10% improvement that count as a stall


class AbstractSolver(eqx.Module):
    """A solver for `min f(XW + b) + alpha·g(W)`: hyperparameters only; `init`, `step`,
    `terminate` act on an explicit state."""

    rtol: eqx.AbstractVar[float]
    atol: eqx.AbstractVar[float]
    max_steps: eqx.AbstractVar[int]

    @abc.abstractmethod
    def init(self, problem: Problem, alpha, W0, b0): ...

    @abc.abstractmethod
    def step(self, problem: Problem, alpha, state): ...

    @abc.abstractmethod
    def terminate(self, problem: Problem, alpha, state) -> tuple[Bool[Array, ""], RESULTS]: ...


class _FISTAState(eqx.Module):
    W: Float[Array, "d k"]
    b: Float[Array, " k"]
    Z: Float[Array, "n k"]  # X @ W + b (Gram form: G @ W), kept so momentum needs no product
    W_prev: Float[Array, "d k"]
    b_prev: Float[Array, " k"]
    Z_prev: Float[Array, "n k"]
    t: Float[Array, ""]
    beta: Float[Array, ""]  # momentum for the next step
    lipschitz: Float[Array, ""]
    num_steps: Int[Array, ""]
    num_restarts: Int[Array, ""]
    objective: Float[Array, ""]
    duality_gap: Float[Array, ""]
    kkt_residual: Float[Array, ""]
    precision_floor: Float[Array, ""]  # the smallest gap / KKT residual the dtype certifies
    W_check: Float[Array, "d k"]  # the iterate at the previous convergence test
    best: Float[Array, ""]  # the best convergence measure so far (gap or KKT residual)
    stalled: Int[Array, ""]  # convergence tests since `best` last fell by 10%


class FISTA(AbstractSolver):
    """Accelerated proximal gradient (FISTA).

    **Arguments:**

    - `rtol`, `atol`: stop when the duality gap (squared loss) is `<= atol + rtol·objective`,
      or, for the logistic/softmax losses, when the KKT residual
      `max |∇f + alpha·∂g|` is `<= atol + rtol·max(alpha, alpha_max)` (`RESULTS.successful`);
      or when it is at the smallest value the working precision can reach
      (`RESULTS.precision_floor`, also a converged result): the rounding error of the gradient
      (`Problem.gap_floor`), or an iterate that no longer changes at all, its steps below the
      resolution of the coefficients in this dtype. In float32 that is about 1e-6..1e-3 of the
      objective, while the objective itself is typically accurate to far better.
    - `max_steps`: hard limit on iterations (`RESULTS.max_steps_reached` after it).
    - `step_size`: `"lipschitz"` (`1/L`, `L` by power iteration: `σ_max(X)²/n` for the squared
      loss, `/4` logistic, `/2` softmax) or `"backtracking"` (Beck & Teboulle's rule, `L`
      multiplied by `backtrack_factor` until the quadratic upper bound holds; `L` never decreases).
    - `restart`: gradient-based adaptive restart (O'Donoghue & Candès 2015): momentum is reset
      when `⟨V_k − W_{k+1}, W_{k+1} − W_k⟩ > 0`.
    - `check_every`: convergence is tested every this many steps (the test costs one extra
      `Xᵀ r` product); the inner steps run in a `fori_loop`, so `vmap` adds no per-step branch.

    ??? cite
        Beck & Teboulle, "A Fast Iterative Shrinkage-Thresholding Algorithm for Linear Inverse
        Problems", SIAM J. Imaging Sci. 2(1), 2009. O'Donoghue & Candès, "Adaptive Restart for
        Accelerated Gradient Schemes", Found. Comput. Math. 15, 2015.
    """

    rtol: float = 1e-6
    atol: float = 0.0
    max_steps: int = eqx.field(static=True, default=10_000)
    step_size: Literal["lipschitz", "backtracking"] = eqx.field(static=True, default="lipschitz")
    restart: bool = eqx.field(static=True, default=True)
    check_every: int = eqx.field(static=True, default=10)
    backtrack_factor: float = 2.0
    stop_at_floor: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        if self.step_size not in ("lipschitz", "backtracking"):
            raise ValueError(
                f"step_size must be 'lipschitz' or 'backtracking', got {self.step_size!r}"
            )
        if self.max_steps < 1 or self.check_every < 1:
            raise ValueError(
                f"max_steps and check_every must be >= 1, got {self.max_steps}, {self.check_every}"
            )
        if self.step_size == "backtracking" and not self.backtrack_factor > 1:
            raise ValueError(f"backtrack_factor must be > 1, got {self.backtrack_factor}")

    def init(self, problem: Problem, alpha, W0, b0) -> _FISTAState:
        X = problem.X
        dtype = X.dtype
        if self.step_size == "lipschitz":
            L = problem.matvec_lipschitz()
        else:  # a lower bound: the largest squared column norm (plus the intercept column)
            L = problem.column_lipschitz()
        L = jnp.maximum(L, jnp.finfo(dtype).tiny)
        W0 = jnp.where(problem.colmask[:, None], W0, 0.0)
        Z0 = problem.linear(W0, b0)
        zero = jnp.array(0.0, dtype)
        nan = jnp.array(jnp.nan, dtype)
        return _FISTAState(
            W=W0,
            b=b0,
            Z=Z0,
            W_prev=W0,
            b_prev=b0,
            Z_prev=Z0,
            t=jnp.array(1.0, dtype),
            beta=zero,
            lipschitz=L,
            num_steps=jnp.array(0),
            num_restarts=jnp.array(0),
            objective=nan,
            duality_gap=nan,
            kkt_residual=nan,
            precision_floor=nan,
            W_check=jnp.full_like(W0, jnp.nan),
            best=jnp.array(jnp.inf, dtype),
            stalled=jnp.array(0),
        )

    def reset(self, problem: Problem, state: _FISTAState) -> _FISTAState:
        """`state` without momentum, its linear state recomputed for `problem`."""
        Z = problem.linear(state.W, state.b)
        return eqx.tree_at(
            lambda s: (
                s.Z,
                s.W_prev,
                s.b_prev,
                s.Z_prev,
                s.t,
                s.beta,
                s.W_check,
                s.best,
                s.stalled,
            ),
            state,
            (
                Z,
                state.W,
                state.b,
                Z,
                jnp.ones_like(state.t),
                jnp.zeros_like(state.beta),
                jnp.full_like(state.W, jnp.nan),
                jnp.full_like(state.best, jnp.inf),
                jnp.zeros_like(state.stalled),
            ),
        )

    def step(self, problem: Problem, alpha, state: _FISTAState) -> _FISTAState:
        beta = state.beta
        V = state.W + beta * (state.W - state.W_prev)
        bV = state.b + beta * (state.b - state.b_prev)
        ZV = state.Z + beta * (state.Z - state.Z_prev)
        gW, gb = problem.grads(ZV)

        def candidate(L):
            W = problem.prox(V - gW / L, alpha / L)
            b = bV - gb / L
            return W, b, problem.linear(W, b)

        if self.step_size == "lipschitz":
            L = state.lipschitz
            W, b, Z = candidate(L)
        else:
            fV = problem.value(ZV, V)

            def too_big(c):  # f(W) − f(V) > ⟨∇f(V), W − V⟩ + L/2 ‖W − V‖²
                L, W, b, Z = c
                dW, db = W - V, b - bV
                bound = jnp.sum(gW * dW) + jnp.sum(gb * db)
                bound = bound + 0.5 * L * (jnp.sum(dW * dW) + jnp.sum(db * db))
                change = problem.value_change(Z, W, ZV, V)
                slack = 10 * jnp.finfo(fV.dtype).eps * jnp.abs(fV)
                return jnp.isfinite(change) & (change > bound + slack)

            def grow(c):
                L = c[0] * self.backtrack_factor
                return (L, *candidate(L))

            L0 = state.lipschitz
            L, W, b, Z = jax.lax.while_loop(too_big, grow, (L0, *candidate(L0)))

        if self.restart:
            inner = jnp.sum((V - W) * (W - state.W)) + jnp.sum((bV - b) * (b - state.b))
            restart = inner > 0
        else:
            restart = jnp.array(False)
        t = jnp.where(restart, 1.0, state.t)
        t_next = 0.5 * (1 + jnp.sqrt(1 + 4 * t * t))
        beta_next = jnp.where(restart, 0.0, (t - 1) / t_next)
        return eqx.tree_at(
            lambda s: (
                s.W,
                s.b,
                s.Z,
                s.W_prev,
                s.b_prev,
                s.Z_prev,
                s.t,
                s.beta,
                s.lipschitz,
                s.num_steps,
                s.num_restarts,
            ),
            state,
            (
                W,
                b,
                Z,
                state.W,
                state.b,
                state.Z,
                t_next,
                beta_next,
                L,
                state.num_steps + 1,
                state.num_restarts + restart.astype(int),
            ),
        )

    def terminate(self, problem: Problem, alpha, state: _FISTAState):
        """Evaluate objective, duality gap and KKT residual at the current iterate; return
        `(done, result, state_with_stats)`. Converged: the gap (squared loss) or the KKT
        residual passes `atol + rtol·scale` (`successful`), or is at the rounding floor of the
        working precision (`precision_floor`, see `Problem.gap_floor`)."""
        gW, gb = problem.grads(state.Z)
        obj = problem.value(state.Z, state.W) + alpha * problem.penalty_value(state.W)
        kkt = problem.kkt_residual(state.W, gW, gb, alpha)
        gap = problem.duality_gap(state.W, state.Z, gW, alpha)
        if problem.loss == "squared":
            measure = gap
            ok = gap <= self.atol + self.rtol * jnp.abs(obj)
            floor = problem.gap_floor(state.W, state.Z, gW, alpha)
        else:
            measure = kkt
            ok = kkt <= self.atol + self.rtol * jnp.maximum(alpha, problem.alpha_max)
            floor = problem.kkt_floor(state.W, state.Z)
        # at the floor: below the rounding estimate, or the iterate no longer moves at all (the
        # steps are below the resolution of W in this dtype)
        # or no progress for `_STALL` tests within 4x of the estimate (it is not a bound)
        frozen = jnp.all(state.W == state.W_check)
        improved = measure < 0.9 * state.best
        stalled = jnp.where(improved, 0, state.stalled + 1)
        at_floor = (measure <= floor) | frozen | ((stalled >= _STALL) & (measure <= 4 * floor))
        at_floor = at_floor & self.stop_at_floor
        finite = jnp.isfinite(obj) & jnp.isfinite(kkt)
        result = RESULTS.where(
            ok,
            RESULTS.successful,
            RESULTS.where(at_floor, RESULTS.precision_floor, RESULTS.max_steps_reached),
        )
        result = RESULTS.where(finite, result, RESULTS.nonfinite)
        state = eqx.tree_at(
            lambda s: (s.objective, s.duality_gap, s.kkt_residual, s.precision_floor, s.W_check,
                       s.best, s.stalled),
            state,
            (obj, gap, kkt, floor, state.W, jnp.where(improved, measure, state.best), stalled),
        )  # fmt: skip
        return ok | at_floor | ~finite, result, state


def _run(solver: AbstractSolver, problem: Problem, alpha, state, stop_on_stall=False):
    """ONE `lax.while_loop` over blocks of `check_every` steps from `state` (the convergence
    test runs after each block), stopping at convergence, a non-finite value, `max_steps`, or
    (with `stop_on_stall`) when the convergence measure has not fallen by 10% in `_STALL`
    tests."""
    every = getattr(solver, "check_every", 1)

    def cond(carry):
        state, done, _ = carry
        stop = done | (stop_on_stall & (state.stalled >= _STALL))
        return ~stop & (state.num_steps < solver.max_steps)

    def body(carry):
        state, _, _ = carry
        n_inner = jnp.minimum(every, solver.max_steps - state.num_steps)
        state = jax.lax.fori_loop(0, n_inner, lambda _, s: solver.step(problem, alpha, s), state)
        done, result, state = solver.terminate(problem, alpha, state)
        return state, done, result

    carry = (state, jnp.array(False), RESULTS.max_steps_reached)
    state, _, result = jax.lax.while_loop(cond, body, carry)
    return state, result


_MAX_REBASES = 4


def iterate(solver: AbstractSolver, problem: Problem, alpha, W0, b0):
    """Run `solver` from `(W0, b0)` (`_run`). In Gram form the gradient `G W − XᵀY/n` cancels,
    so its rounding error can stall the solve above the data form's floor: a solve that stops
    at the precision floor, or stalls, is re-anchored at its iterate (`Problem.rebase`: the
    gradient there recomputed from the data) and continued; at most 4 times, and a floor stop
    only while each re-anchoring halves the duality gap. Returns `(state, result)`."""
    state = solver.init(problem, alpha, W0, b0)
    if not problem.can_rebase:
        return _run(solver, problem, alpha, state)

    def anchor(p):
        return p.W_ref, p.Y, p.yy

    def cond(carry):
        _, state, result, k, last = carry
        floor = (result == RESULTS.precision_floor) & (state.duality_gap < 0.5 * last)
        stall = (result == RESULTS.max_steps_reached) & (state.stalled >= _STALL)
        again = (floor | stall) & (k <= _MAX_REBASES) & (state.num_steps < solver.max_steps)
        return (k == 0) | again

    def body(carry):
        a, state, _, k, _ = carry
        p = eqx.tree_at(anchor, problem, a)

        def rebase(p, state):
            p = p.rebase(state.W)
            return p, solver.reset(p, state)

        p, state_k = jax.lax.cond(k > 0, rebase, lambda p, s: (p, s), p, state)
        state_k, result = _run(solver, p, alpha, state_k, stop_on_stall=k < _MAX_REBASES)
        last = jnp.where(k > 0, state.duality_gap, inf)  # the gap at the previous stop
        return anchor(p), state_k, result, k + 1, last

    inf = jnp.array(jnp.inf, state.duality_gap.dtype)
    carry = (anchor(problem), state, RESULTS.max_steps_reached, jnp.array(0), inf)
    _, state, result, _, _ = jax.lax.while_loop(cond, body, carry)
    return state, result
