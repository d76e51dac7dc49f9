"""Methods as values: `discover(method, model, task) -> Circuit`.

Each discovery method is an `eqx.Module` of its hyperparameters (as an optimistix solver is a
value: Rader et al. 2024): `EdgePatching()`, `EAP()`, `EAPIG(steps=5)`, `AtP()`,
`ACDC(threshold=...)`, `LearnedMask(...)`, `CircuitLasso(...)`, `PathPatching(...)`. Run one
with `discover`; every one returns a `Circuit` on `jaxcirc.graph.graph(model)`, so a sweep over
methods is a loop over values and every metric takes the result.
"""

from __future__ import annotations

import abc

import equinox as eqx

from .._checks import check_int
from .._finite import finite_result
from ..graph import Circuit, Scores
from ._task_args import task_arguments


class DiscoveryMethod(eqx.Module):
    """A circuit-discovery method: its fields are its hyperparameters."""

    @abc.abstractmethod
    def __call__(self, model, task) -> Circuit:
        """The circuit of `model` for `task` (a `jaxcirc.tasks.Task`, or any value with
        `clean`, `corrupt` and `metric`)."""


class ScoringMethod(DiscoveryMethod):
    """A method that scores every unit; the circuit keeps the top `n_edges` (or every unit with
    a non-zero score when `n_edges` is None)."""

    n_edges: int | None = eqx.field(default=None, kw_only=True)

    nan_marks_unmeasured = False
    """A class whose scores are NaN on the edges it does not measure sets this (its results
    are checked by its own function)."""

    def __init_subclass__(cls, **kwargs):
        """Every subclass's `scores` is checked once for non-finite values (an error names the
        first edge and where the model's run turns non-finite)."""
        super().__init_subclass__(**kwargs)
        if "scores" in cls.__dict__ and not cls.nan_marks_unmeasured:
            name = lambda arguments: type(arguments["self"]).__name__
            cls.scores = finite_result(name)(cls.__dict__["scores"])

    def __check_init__(self):
        if self.n_edges is not None:
            check_int(self.n_edges, "n_edges", 0)
        for name in ("chunk_size", "steps"):  # the shared hyperparameters that count things
            value = getattr(self, name, None)
            if value is not None:
                check_int(value, f"{type(self).__name__} {name}", 1)

    @abc.abstractmethod
    def scores(self, model, clean, corrupt, metric) -> Scores:
        """The scores of every unit."""

    def __call__(self, model, task) -> Circuit:
        clean, corrupt, metric = task_arguments(task, None, getattr(task, "metric", None))
        scores = self.scores(model, clean, corrupt, metric)
        return scores.top(self.n_edges) if self.n_edges is not None else scores.above(0.0)


def discover(method: DiscoveryMethod, model, task) -> Circuit:
    """Run discovery `method` (a value such as `EAP()`) on `model` for `task`."""
    if not isinstance(method, DiscoveryMethod):
        raise TypeError(
            f"method must be a discovery method value such as jaxcirc.methods.EAP(); got "
            f"{method!r} (a class? instantiate it: EAP())"
        )
    circuit = method(model, task)
    if not isinstance(circuit, Circuit):
        raise TypeError(f"{type(method).__name__} returned {type(circuit).__name__}, not a Circuit")
    return circuit
