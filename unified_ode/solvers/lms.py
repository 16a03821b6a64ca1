"""Linear multistep: variable-step Adams–Bashforth on the drift, for any field.

Step ``i`` (from ``t_i`` to ``t_{i+1}``) uses the drifts already computed at the last ``k``
grid times ``t_i, t_{i−1}, …`` (``k = min(i + 1, order)``):

    x_{i+1} = x_i + Σ_j w_j f(x_{i−j}, t_{i−j}),   w_j = ∫_{t_i}^{t_{i+1}} L_j(τ) dτ,

with ``L_j`` the Lagrange basis polynomials through those times, so the update integrates
exactly any drift that is a polynomial of degree ``< k`` in ``t`` along the path. The weights are
computed in float64 by Gauss–Legendre quadrature (exact for these polynomials). One drift call
per step, NFE = steps. The drift is never evaluated at ``t = 0``; a step that ends at 0 is, as
for every solver, the flow's exact last step. Unlike the exponential integrators it needs no
affine schedule, so it also serves fields such as ``radial_general``.
"""

from __future__ import annotations

import numpy as np

from unified_ode.solvers.base import Solver


def adams_bashforth_weights(nodes: list[float], t0: float, t1: float) -> list[float]:
    """``w_j = ∫_{t0}^{t1} L_j(τ) dτ`` for the Lagrange basis on distinct ``nodes`` (float64)."""
    k = len(nodes)
    gx, gw = np.polynomial.legendre.leggauss(max(2, k))
    half = 0.5 * (t1 - t0)
    tau = t0 + half * (gx + 1.0)
    out = []
    for j, tj in enumerate(nodes):
        basis = np.ones_like(tau)
        for m, tm in enumerate(nodes):
            if m != j:
                basis *= (tau - tm) / (tj - tm)
        out.append(float(half * np.sum(gw * basis)))
    return out


class AdamsBashforth(Solver):
    """Adams–Bashforth linear multistep of ``order`` 1–4 (the first steps ramp up from order
    1); NFE = steps. Works for every field (drift form)."""

    name = "lms"

    def __init__(self, steps: int = 18, *, order: int = 4, **kwargs):
        super().__init__(steps=steps, **kwargs)
        if int(order) not in (1, 2, 3, 4):
            raise ValueError(f"solver.order must be 1, 2, 3 or 4, got {order}")
        self.order = int(order)

    def step(self, flow, x, times, i, state):
        history = state.setdefault("history", [])  # drifts at t_i, t_{i−1}, … (newest first)
        history.insert(0, flow.drift(x, state["t"][i]))
        del history[self.order:]
        t = [float(times[i - j]) for j in range(len(history))]
        w = adams_bashforth_weights(t, t[0], float(times[i + 1]))
        out = x + w[0] * history[0]
        for wj, fj in zip(w[1:], history[1:]):
            out = out + wj * fj
        return out

    def describe(self) -> dict:
        return {**super().describe(), "order": self.order}


__all__ = ["AdamsBashforth", "adams_bashforth_weights"]
