"""ODE solvers over a flow and a time grid, with exact NFE accounting (torch only; nothing
from physics: a solver sees the :class:`~unified_ode.solvers.base.Flow` protocol)."""

from unified_ode.solvers.adaptive import Dopri5
from unified_ode.solvers.base import (
    CountingFlow,
    DriftFlow,
    Flow,
    NFELimitExceeded,
    Schedule,
    Solver,
    SolveResult,
)
from unified_ode.solvers.consistency import ConsistencySampler
from unified_ode.solvers.fixed import RK4, Euler, Heun
from unified_ode.solvers.ipndm import IPNDM
from unified_ode.solvers.lms import AdamsBashforth
from unified_ode.solvers.multistep import DPMSolverPP, DPMSolverPP2M, DPMSolverPP3M
from unified_ode.solvers.pc import ExpPC
from unified_ode.solvers.unipc import UniPC

__all__ = ["RK4", "AdamsBashforth", "ConsistencySampler", "CountingFlow", "DPMSolverPP",
           "DPMSolverPP2M", "DPMSolverPP3M", "Dopri5", "DriftFlow", "Euler", "ExpPC", "Flow",
           "Heun", "IPNDM", "NFELimitExceeded", "Schedule", "SolveResult", "Solver", "UniPC"]
