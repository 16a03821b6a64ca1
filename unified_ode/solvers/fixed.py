"""Fixed-step explicit solvers over a grid: Euler, Heun (EDM's second-order step), RK4.

Each implements one step of the shared loop (:meth:`Solver._integrate`); a step that ends at
``t = 0`` is the flow's exact last step in every solver. NFE per grid of ``N`` steps with that
final step (without it):

=========  ====================  ==========
solver     final step to 0       none
=========  ====================  ==========
euler      N                     N
heun       2N − 1                2N
rk4        4(N − 1) + 1          4N
=========  ====================  ==========
"""

from __future__ import annotations

from unified_ode.solvers.base import Solver


class Euler(Solver):
    """Explicit Euler: one drift evaluation per step; NFE = steps."""

    name = "euler"

    def step(self, flow, x, times, i, state):
        h = float(times[i + 1] - times[i])
        return x + h * flow.drift(x, state["t"][i])


class Heun(Solver):
    """Heun's method (EDM Algorithm 1): an Euler predictor and a trapezoidal corrector.
    NFE = 2·steps − 1 with a final step to 0 (which is the exact last step), else 2·steps."""

    name = "heun"

    def nfe_for_steps(self, steps: int) -> int:
        return 2 * int(steps) - (1 if self.final_step else 0)

    def step(self, flow, x, times, i, state):
        h = float(times[i + 1] - times[i])
        d = flow.drift(x, state["t"][i])
        x_next = x + h * d
        return x + 0.5 * h * (d + flow.drift(x_next, state["t"][i + 1]))


class RK4(Solver):
    """The classic 4th-order Runge–Kutta method (stages at ``t``, ``t + h/2`` twice, ``t + h``).
    NFE = 4(steps − 1) + 1 with a final step to 0, else 4·steps."""

    name = "rk4"

    def nfe_for_steps(self, steps: int) -> int:
        return 4 * int(steps) - (3 if self.final_step else 0)

    def step(self, flow, x, times, i, state):
        t0, t1 = state["t"][i], state["t"][i + 1]
        h = float(times[i + 1] - times[i])
        tm = (0.5 * (times[i] + times[i + 1])).to(dtype=x.dtype, device=x.device)
        k1 = flow.drift(x, t0)
        k2 = flow.drift(x + 0.5 * h * k1, tm)
        k3 = flow.drift(x + 0.5 * h * k2, tm)
        k4 = flow.drift(x + h * k3, t1)
        return x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


__all__ = ["RK4", "Euler", "Heun"]
