"""ODE solvers over a drift and a time grid, with exact NFE accounting (torch only)."""

from unified_ode.solvers.base import CountingDrift, Solver, SolveResult
from unified_ode.solvers.fixed import Euler, Heun

__all__ = ["CountingDrift", "Euler", "Heun", "SolveResult", "Solver"]
