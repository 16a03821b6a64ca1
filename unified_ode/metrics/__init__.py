"""Sample-quality metrics."""

from unified_ode.metrics.points import mmd_rbf, sliced_wasserstein

__all__ = ["mmd_rbf", "sliced_wasserstein"]
