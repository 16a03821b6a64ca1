"""ODE solvers over a drift and a time grid, with exact NFE accounting (torch only)."""

from unified_ode.solvers.adaptive import Dopri5
from unified_ode.solvers.affine import denoiser_from_velocity, is_affine, model_denoiser
from unified_ode.solvers.base import CountingDrift, Solver, SolveResult
from unified_ode.solvers.fixed import RK4, Euler, Heun
from unified_ode.solvers.lms import AdamsBashforth
from unified_ode.solvers.multistep import DPMSolverPP, DPMSolverPP2M, DPMSolverPP3M
from unified_ode.solvers.pc import ExpPC

__all__ = ["RK4", "AdamsBashforth", "CountingDrift", "DPMSolverPP", "DPMSolverPP2M",
           "DPMSolverPP3M", "Dopri5", "Euler", "ExpPC", "Heun", "SolveResult", "Solver",
           "denoiser_from_velocity", "is_affine", "model_denoiser"]
