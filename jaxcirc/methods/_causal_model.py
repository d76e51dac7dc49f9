"""`CausalModel`: a small high-level (symbolic) causal model with do-interventions.

A deterministic structural causal model over named variables: each non-input variable has
parents and a mechanism (a `jnp` function of the parents' values). `run` evaluates it in
topological order, `run(..., interventions=...)` fixes variables (Pearl's do-operator), and
`interchange` sets variables to the values they take on other inputs (Geiger et al. 2021,
"Causal Abstractions of Neural Networks"; Geiger et al. 2023).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from ..models._site import nearest


class CausalModel:
    """A high-level causal model.

    **Arguments:**

    - `variables`: every variable's name.
    - `parents`: `{variable: [parent, ...]}` for each non-input variable.
    - `mechanisms`: `{variable: fn(*parent_values) -> value}` for each non-input variable;
        `fn` is a `jnp` function, elementwise or vmappable (batches are vmapped over).
    - `inputs`: the input variables (no parents; their values are given to `run`).
    - `output`: the output variable, compared with the network's prediction by `iia`.

    ```python
    hl = CausalModel(["a", "b", "S"], {"S": ["a", "b"]}, {"S": jnp.add}, ["a", "b"], "S")
    hl.run({"a": 1, "b": 2})["S"]                                 # 3
    hl.run({"a": 1, "b": 2}, interventions={"a": 5})["S"]         # 7
    hl.interchange({"a": 1, "b": 2}, {"a": {"a": 4, "b": 0}})     # S = 4 + 2 = 6
    ```
    """

    def __init__(
        self,
        variables: Sequence[str],
        parents: Mapping[str, Sequence[str]],
        mechanisms: Mapping[str, Callable[..., Array]],
        inputs: Sequence[str],
        output: str,
    ):
        self.variables = tuple(variables)
        if len(set(self.variables)) != len(self.variables):
            raise ValueError(f"duplicate variable names in {self.variables}")
        self.inputs = tuple(inputs)
        for what, names in (
            ("input", self.inputs),
            ("output", [output]),
            ("parents key", parents),
            ("mechanisms key", mechanisms),
        ):
            for name in names:
                self.check_variable(name, what)
        self.output = output
        self.parents = {v: tuple(parents.get(v, ())) for v in self.variables}
        self.mechanisms = dict(mechanisms)
        for v in self.variables:
            for p in self.parents[v]:
                self.check_variable(p, f"parent of {v!r}")
            if v in self.inputs:
                if self.parents[v] or v in self.mechanisms:
                    raise ValueError(f"input variable {v!r} cannot have parents or a mechanism")
            elif v not in self.mechanisms:
                raise ValueError(
                    f"variable {v!r} is not an input and has no mechanism; "
                    f"give mechanisms[{v!r}] or list it in inputs"
                )
        self.order = self._topological_order()

    def check_variable(self, name, what: str = "variable") -> str:
        """Return `name` if it is a variable, else raise a `ValueError` naming the nearest."""
        if name not in self.variables:
            raise ValueError(
                f"{what} {name!r} is not a variable of the high-level model"
                f"{nearest(name, self.variables)}; its variables: {list(self.variables)}"
            )
        return name

    def _topological_order(self) -> tuple[str, ...]:
        order, state = [], {}

        def visit(v, path):
            if state.get(v) == "done":
                return
            if state.get(v) == "active":
                raise ValueError(f"the high-level model has a cycle: {' -> '.join(path + [v])}")
            state[v] = "active"
            for p in self.parents[v]:
                visit(p, path + [v])
            state[v] = "done"
            order.append(v)

        for v in self.variables:
            visit(v, [])
        return tuple(order)

    def run(
        self,
        inputs: Mapping[str, ArrayLike],
        interventions: Mapping[str, ArrayLike] | None = None,
    ) -> dict[str, Array]:
        """Every variable's value on `inputs`, with `interventions` (`do(var = value)`)."""
        interventions = dict(interventions or {})
        for name in interventions:
            self.check_variable(name, "intervened variable")
        missing = [v for v in self.inputs if v not in inputs and v not in interventions]
        if missing:
            raise ValueError(f"missing values for input variables {missing}; got {list(inputs)}")
        for name in inputs:
            if name not in self.inputs:
                raise ValueError(
                    f"{name!r} is not an input variable{nearest(name, self.inputs)}; "
                    f"inputs: {list(self.inputs)}"
                )
        values: dict[str, Array] = {}
        for v in self.order:
            if v in interventions:
                values[v] = jnp.asarray(interventions[v])
            elif v in self.inputs:
                values[v] = jnp.asarray(inputs[v])
            else:
                values[v] = jnp.asarray(self.mechanisms[v](*(values[p] for p in self.parents[v])))
        return values

    def interchange(
        self,
        base: Mapping[str, ArrayLike],
        sources: Mapping[str, Mapping[str, ArrayLike]],
    ) -> dict[str, Array]:
        """Run on `base` with each variable in `sources` set to its value on its source input.

        `sources` maps a variable to the inputs of its own source, so several variables may
        come from several sources (multi-source interchange; Geiger et al. 2023).
        """
        fixed = {v: self.run(src)[self.check_variable(v)] for v, src in sources.items()}
        return self.run(base, fixed)

    def __repr__(self):
        mech = ", ".join(
            f"{v} <- f({', '.join(self.parents[v])})" for v in self.order if v not in self.inputs
        )
        return f"CausalModel(inputs={list(self.inputs)}, {mech}, output={self.output!r})"
