"""Fixed-step explicit solvers over a grid: Euler, Heun (EDM's second-order step), RK4.

A step that ends at ``t = 0`` (the optional final step of the grid) is an Euler step in every
solver: the drift is undefined at ``t = 0``, and for an affine field with ``a' = 0`` that Euler
step is exactly the denoising step ``x_0 = D(x, t_min)`` (see :mod:`unified_ode.solvers.base`).
NFE per grid of ``N`` steps with that final step (without it):

=========  ====================  ==========
solver     final step to 0       none
=========  ====================  ==========
euler      N                     N
heun       2N − 1                2N
rk4        4(N − 1) + 1          4N
=========  ====================  ==========
"""

from __future__ import annotations

from unified_ode.solvers.base import Solver, step_time


class Euler(Solver):
    """Explicit Euler: one drift evaluation per step; NFE = steps."""

    name = "euler"

    def _integrate(self, drift, x, times, record):
        record(0, x, times[0])
        n = len(times) - 1
        for i in range(n):
            h = (times[i + 1] - times[i]).item()
            x = x + h * drift(x, step_time(times, i, x))
            record(i + 1, x, times[i + 1], final=i == n - 1)
        return x


class Heun(Solver):
    """Heun's method (EDM Algorithm 1): an Euler predictor and a trapezoidal corrector, except
    on a step that ends at ``t = 0``, where the drift is undefined and the Euler step is kept.
    NFE = 2·steps − 1 with a final step to 0, else 2·steps."""

    name = "heun"

    def nfe_for_steps(self, steps: int) -> int:
        return 2 * int(steps) - (1 if self.final_step else 0)

    def _integrate(self, drift, x, times, record):
        record(0, x, times[0])
        n = len(times) - 1
        for i in range(n):
            h = (times[i + 1] - times[i]).item()
            d = drift(x, step_time(times, i, x))
            x_next = x + h * d
            if times[i + 1] != 0:
                d2 = drift(x_next, step_time(times, i + 1, x))
                x_next = x + 0.5 * h * (d + d2)
            x = x_next
            record(i + 1, x, times[i + 1], final=i == n - 1)
        return x


class RK4(Solver):
    """The classic 4th-order Runge–Kutta method (stages at ``t``, ``t + h/2`` twice, ``t + h``)
    on every step of the grid, except a step that ends at ``t = 0``, which is one Euler
    (denoising) step because the last stage would need the drift at ``t = 0``.
    NFE = 4(steps − 1) + 1 with a final step to 0, else 4·steps."""

    name = "rk4"

    def nfe_for_steps(self, steps: int) -> int:
        return 4 * int(steps) - (3 if self.final_step else 0)

    def _integrate(self, drift, x, times, record):
        record(0, x, times[0])
        n = len(times) - 1
        for i in range(n):
            t0, t1 = times[i], times[i + 1]
            h = (t1 - t0).item()
            k1 = drift(x, step_time(times, i, x))
            if t1 == 0:
                x = x + h * k1
            else:
                tm = (0.5 * (t0 + t1)).to(dtype=x.dtype, device=x.device)
                k2 = drift(x + 0.5 * h * k1, tm)
                k3 = drift(x + 0.5 * h * k2, tm)
                k4 = drift(x + h * k3, step_time(times, i + 1, x))
                x = x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
            record(i + 1, x, t1, final=i == n - 1)
        return x


__all__ = ["RK4", "Euler", "Heun"]
