"""Fixed-step explicit solvers: Euler and Heun (EDM's second-order step)."""

from __future__ import annotations

from unified_ode.solvers.base import Solver


def _t(times, i, x):
    return times[i].to(dtype=x.dtype, device=x.device)


class Euler(Solver):
    """Explicit Euler: one drift evaluation per step; NFE = steps."""

    name = "euler"

    def _integrate(self, drift, x, times, record):
        record(0, x, times[0])
        n = len(times) - 1
        for i in range(n):
            h = (times[i + 1] - times[i]).item()
            x = x + h * drift(x, _t(times, i, x))
            record(i + 1, x, times[i + 1], final=i == n - 1)
        return x


class Heun(Solver):
    """Heun's method (EDM Algorithm 1): an Euler predictor and a trapezoidal corrector, except
    on a step that ends at ``t = 0``, where the drift is undefined and the Euler step is kept.
    NFE = 2·steps − 1 with a final step to 0, else 2·steps."""

    name = "heun"

    def _integrate(self, drift, x, times, record):
        record(0, x, times[0])
        n = len(times) - 1
        for i in range(n):
            h = (times[i + 1] - times[i]).item()
            d = drift(x, _t(times, i, x))
            x_next = x + h * d
            if times[i + 1] != 0:
                d2 = drift(x_next, _t(times, i + 1, x))
                x_next = x + 0.5 * h * (d + d2)
            x = x_next
            record(i + 1, x, times[i + 1], final=i == n - 1)
        return x


__all__ = ["Euler", "Heun"]
