"""Solvers for penalised linear models: FISTA in the optimistix shape, `lasso` and `lasso_path`
with scikit-learn's objectives; `unit_curvature`, the gradient and diagonal curvature of a loss
w.r.t. unit activations."""

from ._curvature import Curvature as Curvature
from ._curvature import unit_curvature as unit_curvature
from ._fista import FISTA as FISTA
from ._fista import AbstractSolver as AbstractSolver
from ._lasso import lasso as lasso
from ._lasso import lasso_path as lasso_path
from ._prox import group_soft_threshold as group_soft_threshold
from ._prox import soft_threshold as soft_threshold
from ._solution import RESULTS as RESULTS
from ._solution import Solution as Solution
