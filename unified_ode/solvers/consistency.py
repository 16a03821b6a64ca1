"""Multi-step consistency sampling (Song et al. 2023, Algorithm 1) on any flow whose
``denoiser`` is a consistency function and that can re-noise with its field's kernel.

From ``x = z`` at ``t_0 = t_max``: ``x̂ = f(x, t_i)`` (one NFE), then re-noise
``x ~ p_{t_{i+1}}(· | x̂)`` with the field's kernel (``flow.perturb``) and repeat; the last
evaluation is the exact last step ``a(0) f(x, t_{N−1})``. ``steps`` evaluations = NFE.

The grid holds ``steps`` positive times, the field's ρ = 7 grid over ``steps + 1`` points with
its end ``t_min`` dropped (re-noising to ``t_min`` would add nothing), then ``0``: for 2 steps
on ``[0.002, 80]`` that is ``80, 2.5, 0``.
"""

from __future__ import annotations

import torch

from unified_ode.solvers.base import CountingFlow, Solver
from unified_ode.timegrid import make_grid


class KernelCountingFlow(CountingFlow):
    """A counting flow that also passes the (free) kernel draw ``perturb`` through."""

    def perturb(self, y, t, *, generator=None):
        if not hasattr(self.flow, "perturb"):
            raise TypeError(f"solver=consistency re-noises with the field's kernel; this flow "
                            f"({type(self.flow).__name__}) has no perturb(y, t)")
        return self.flow.perturb(y, t, generator=generator)


class ConsistencySampler(Solver):
    """``solver=consistency``: multi-step consistency sampling (see the module docstring).

    ``seed``: seed of the re-noising draws (``None``: the global generator).
    """

    name = "consistency"
    #: not an ODE solver: it samples a consistency function (its flow's ``denoiser``), so ODE
    #: benchmarks and ODE-accuracy tests leave it out
    ode_solver = False

    def __init__(self, steps: int = 1, grid: str | None = None, rho: float = 7.0,
                 t_min: float | None = None, t_max: float | None = None,
                 final_step: bool = True, seed: int | None = None):
        if not final_step:
            raise ValueError("solver=consistency ends with the exact step to t = 0; "
                             "final_step must be true")
        super().__init__(steps=steps, grid=grid, rho=rho, t_min=t_min, t_max=t_max,
                         final_step=True)
        self.seed = None if seed is None else int(seed)

    def time_grid(self, field) -> torch.Tensor:
        t_min = field.t_min if self.t_min is None else float(self.t_min)
        t_max = field.t_max if self.t_max is None else float(self.t_max)
        pts = make_grid(self.grid or "edm", self.steps, t_min, t_max, rho=self.rho,
                        final_step=False)[:-1]
        return torch.cat([pts, torch.zeros(1, dtype=torch.float64)])

    def _counter(self, flow, bar):
        return KernelCountingFlow(flow)

    def _integrate(self, flow, x, times, observe):
        self._generator = None
        if self.seed is not None:
            self._generator = torch.Generator(device=x.device).manual_seed(self.seed)
        return super()._integrate(flow, x, times, observe)

    def step(self, flow, x, times, i, state):
        denoised = flow.denoiser(x, state["t"][i])
        t_next = state["t"][i + 1].expand(x.shape[0])
        return flow.perturb(denoised, t_next, generator=self._generator)

    def describe(self):
        return {**super().describe(), "seed": self.seed}
