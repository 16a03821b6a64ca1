"""The Lightning layer: the module and its callbacks."""

from unified_ode.lit.callbacks import PointSampleEvaluation
from unified_ode.lit.module import GenerativeODE

__all__ = ["GenerativeODE", "PointSampleEvaluation"]
