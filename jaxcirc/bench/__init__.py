"""Benchmark harnesses: the ground-truth scorecard of circuit discovery on tracr programs."""

from ._ground_truth import METHODS as METHODS
from ._ground_truth import markdown as markdown
from ._ground_truth import problem as problem
from ._ground_truth import scorecard as scorecard
from ._ground_truth import write as write
