"""Solvers for penalised linear models: FISTA in the optimistix shape, `lasso` and `lasso_path`
with scikit-learn's objectives."""

from ._fista import FISTA as FISTA
from ._fista import AbstractSolver as AbstractSolver
from ._lasso import lasso as lasso
from ._lasso import lasso_path as lasso_path
from ._prox import group_soft_threshold as group_soft_threshold
from ._prox import soft_threshold as soft_threshold
from ._solution import RESULTS as RESULTS
from ._solution import Solution as Solution
