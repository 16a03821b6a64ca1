"""Sample-quality metrics."""

from unified_ode.metrics.manifold import data_floor, precision_recall
from unified_ode.metrics.points import mmd_rbf, sliced_wasserstein

__all__ = ["data_floor", "mmd_rbf", "precision_recall", "sliced_wasserstein"]
