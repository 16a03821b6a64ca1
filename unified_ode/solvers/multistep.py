"""Multistep exponential integrators in denoiser form (DPM-Solver++ 2M and 3M style).

For an affine field the step from ``t`` to ``t'`` is exactly (see :mod:`.affine`)

    x' = (s'/s) x + a' ∫_0^h e^{−(h−u)} D(λ + u) du,        λ = log(a/s),  h = λ' − λ.

Replacing ``D`` by its Taylor polynomial ``D + D_λ u + D_λλ u²/2`` at the current point gives

    x' = (s'/s) x + a' (−φ₁ D + h φ₂ D_λ − h² φ₃ D_λλ),
    φ₁ = expm1(−h),  φ₂ = φ₁/h + 1,  φ₃ = φ₂/h − 1/2,

and the derivatives come from a Newton polynomial in ``λ`` through the last ``order`` denoiser
outputs (DPM-Solver++'s "taylor" form; Lu et al. 2022). One denoiser call per step, so
NFE = steps. The first steps use the history they have (orders 1, 2, …); a step that ends at
``t = 0`` (λ = ∞) is the flow's exact last step ``x_0 = a(0) D``; a step that starts where
``a = 0`` (λ = −∞, e.g. rectified flow at ``t = 1``) is the exact first-order step
``x' = (s'/s) x + a' D`` and starts a fresh history. With ``lower_order_final`` and fewer than
15 steps, the order of the ``k``-th last step is at most ``k`` (DPM-Solver's guard against
few-step instability). Because the first step is first order, the global order of 3M is 2 in
the limit (its error constant is smaller); 2M's is 2.
"""

from __future__ import annotations

import math

from unified_ode.solvers.base import Solver

#: ``lower_order_final`` applies to grids with fewer steps than this (DPM-Solver's rule).
LOWER_ORDER_FINAL_BELOW = 15


def _log(v: float) -> float:
    return math.log(v) if v > 0 else -math.inf


def push_history(state: dict, lam: float, den, order: int) -> list:
    """The step's ``(λ, D)`` history (newest last, at most ``order`` entries) kept in
    ``state``; a point where ``λ`` is infinite (``a = 0``) starts a fresh one."""
    history = state.setdefault("history", [])
    if math.isfinite(lam):
        history.append((lam, den))
        del history[:-order]
    else:
        history.clear()
    return history


def schedule_arrays(schedule, times, state: dict) -> tuple[list, list, list]:
    """``a(t_i)``, ``s(t_i)`` and ``λ_i = log(a/s)`` (``+inf`` where ``s = 0``) over the grid, as
    float64 lists, computed once per solve and kept in ``state``."""
    if "lam" not in state:
        a = [schedule.a(t) for t in times]
        s = [schedule.s(t) for t in times]
        state["a"], state["s"] = a, s
        state["lam"] = [_log(ai) - _log(si) if si > 0 else math.inf for ai, si in zip(a, s)]
    return state["a"], state["s"], state["lam"]


class DPMSolverPP(Solver):
    """DPM-Solver++ multistep of ``order`` 1, 2 or 3 in denoiser form (affine fields only).

    Extra parameters: ``order``; ``lower_order_final`` (see the module docstring);
    ``second_order`` (order-2 steps only): ``"midpoint"`` (default) is the multistep update of
    Lu et al.'s DPM-Solver++(2M) algorithm, ``x' = (s'/s) x − a' φ₁ [(1 + 1/(2r)) D₀ − D₋₁/(2r)]``
    with ``r = h₋₁/h``, which evaluates the slope at the step's midpoint in λ (measured more
    accurate at few steps); ``"taylor"`` expands at the current point, ``a' (h + φ₁) D_λ``.
    The two agree to second order. The other parameters are :class:`Solver`'s.
    """

    name = "dpmpp"
    needs_schedule = True

    SECOND_ORDER = ("midpoint", "taylor")

    def __init__(self, steps: int = 18, *, order: int = 2, lower_order_final: bool = True,
                 second_order: str = "midpoint", **kwargs):
        super().__init__(steps=steps, **kwargs)
        if int(order) not in (1, 2, 3):
            raise ValueError(f"solver.order must be 1, 2 or 3, got {order}")
        if second_order not in self.SECOND_ORDER:
            raise ValueError(f"solver.second_order must be one of {self.SECOND_ORDER}, got "
                             f"{second_order!r}")
        self.order = int(order)
        self.lower_order_final = bool(lower_order_final)
        self.second_order = second_order

    def step(self, flow, x, times, i, state):
        a, s, lam = schedule_arrays(flow.schedule, times, state)
        n = len(times) - 1
        den = flow.denoiser(x, state["t"][i])
        history = push_history(state, lam[i], den, self.order)
        h = lam[i + 1] - lam[i]
        order = len(history) if math.isfinite(h) else 1
        if self.lower_order_final and n < LOWER_ORDER_FINAL_BELOW:
            order = min(order, n - i)
        return self._step(x, den, history, max(order, 1), h, s[i + 1] / s[i], a[i + 1],
                          self.second_order == "midpoint")

    @staticmethod
    def _step(x, den, history, order, h, ratio, a_next, midpoint=True):
        phi1 = math.expm1(-h)  # −1 when h = ∞
        x_next = ratio * x - (a_next * phi1) * den
        if order == 1:
            return x_next
        (l0, d0), (l1, d1) = history[-1], history[-2]
        h0 = l0 - l1
        slope = (d0 - d1) / h0  # D[0, −1]
        if order == 2 and midpoint:
            # −a' φ₁ (D₀ + (h/2) slope): the slope weighted at the midpoint of the step
            return x_next - (a_next * phi1 * 0.5 * h) * slope
        # h φ₂ = h + φ₁ and h² φ₃ = h + φ₁ − h²/2, in float64.
        c1 = a_next * (h + phi1)
        if order == 2:
            return x_next + c1 * slope
        l2, d2 = history[-3]
        h1 = l1 - l2
        curv = (slope - (d1 - d2) / h1) / (h0 + h1)  # D[0, −1, −2] = D_λλ / 2
        c2 = a_next * (h + phi1 - 0.5 * h * h)
        # Newton polynomial p(u) = D0 + slope·u + curv·u(u + h0): p'(0) = slope + curv·h0,
        # p''(0) = 2 curv.
        return x_next + c1 * (slope + curv * h0) - (2.0 * c2) * curv

    def describe(self) -> dict:
        return {**super().describe(), "order": self.order,
                "lower_order_final": self.lower_order_final,
                **({"second_order": self.second_order} if self.order == 2 else {})}


class DPMSolverPP2M(DPMSolverPP):
    """DPM-Solver++(2M): second-order multistep in denoiser form; NFE = steps."""

    name = "dpmpp2m"

    def __init__(self, steps: int = 18, *, lower_order_final: bool = True,
                 second_order: str = "midpoint", **kwargs):
        super().__init__(steps=steps, order=2, lower_order_final=lower_order_final,
                         second_order=second_order, **kwargs)


class DPMSolverPP3M(DPMSolverPP):
    """DPM-Solver++(3M): third-order multistep in denoiser form; NFE = steps."""

    name = "dpmpp3m"

    def __init__(self, steps: int = 18, *, lower_order_final: bool = True, **kwargs):
        super().__init__(steps=steps, order=3, lower_order_final=lower_order_final, **kwargs)


__all__ = ["DPMSolverPP", "DPMSolverPP2M", "DPMSolverPP3M"]
