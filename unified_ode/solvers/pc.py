"""Exponential Adams–Bashforth–Moulton in denoiser form, PEC mode (UniPC-style, no extra NFE).

The exact step of an affine field from ``t_i`` to ``t_{i+1}`` (see :mod:`.affine`) is

    x_{i+1} = (s_{i+1}/s_i) x_i + a_{i+1} ∫_0^h e^{−(h−u)} D(λ_i + u) du,   h = λ_{i+1} − λ_i.

The integral of ``e^{−(h−u)}`` times the polynomial through denoiser values at nodes ``u_j``
is a weighted sum ``Σ_j w_j D_j`` with weights exact for polynomials of degree ``< #nodes``
(:func:`exp_weights`). The *predictor* extrapolates from the last ``order`` nodes (this is
DPM-Solver++(kM)); the denoiser is then evaluated at the predicted state — the evaluation the
next step needs anyway — and the *corrector* redoes the step with the polynomial that also
interpolates that new value (one order higher, like UniPC's UniC). The next step reuses the
denoiser value at the predicted state (PEC), so NFE = steps, as for the plain multistep
solvers. A step that ends at ``t = 0`` is the flow's exact last step ``x_0 = a(0) D``; the
step before it and the very last step of a grid without it have no corrector (its call would
be extra).
"""

from __future__ import annotations

import math

import torch

from unified_ode.solvers.base import Solver
from unified_ode.solvers.multistep import (
    LOWER_ORDER_FINAL_BELOW,
    push_history,
    schedule_arrays,
)


def scaled_exp_moments(h: float, k: int) -> list[float]:
    """``J_m = ∫_0^1 h e^{−h(1−v)} v^m dv`` for ``m < k`` (float64): a series for small ``h``
    (no cancellation), the recursion ``J_m = 1 − (m/h) J_{m−1}`` from ``J_0 = 1 − e^{−h}``
    otherwise; ``J_m = 1`` for ``h = ∞``."""
    if math.isinf(h):
        return [1.0] * k
    if h < 0.5:
        out = []
        for m in range(k):
            # h Σ_n (−h)^n m! / (n + m + 1)!
            term = h * math.factorial(m) / math.factorial(m + 1)
            total, n = 0.0, 0
            while abs(term) > 1e-18 * max(abs(total), 1e-300) or n < 2:
                total += term
                n += 1
                term *= -h / (n + m + 1)
                if n > 60:
                    break
            out.append(total)
        return out
    out = [-math.expm1(-h)]
    for m in range(1, k):
        out.append(1.0 - m / h * out[-1])
    return out


def exp_weights(nodes: list[float], h: float) -> list[float]:
    """Weights ``w_j`` with ``Σ_j w_j p(u_j) = ∫_0^h e^{−(h−u)} p(u) du`` for every polynomial
    ``p`` of degree ``< len(nodes)``; ``nodes`` are distinct offsets ``u_j`` in ``λ`` from the
    step's start (``0`` the current point, negative the past, ``h`` the end)."""
    k = len(nodes)
    moments = torch.tensor(scaled_exp_moments(h, k), dtype=torch.float64)
    if k == 1:
        return [float(moments[0])]
    r = torch.tensor(nodes, dtype=torch.float64) / h
    vander = torch.stack([r**m for m in range(k)])  # (m, j): r_j^m
    return torch.linalg.solve(vander, moments).tolist()


class ExpPC(Solver):
    """Exponential multistep predictor of ``order`` (1–4) with an optional corrector of one
    order higher (PEC), in denoiser form for affine fields; NFE = steps.

    ``corrector: false`` gives the plain exponential Adams–Bashforth (DPM-Solver++(kM)).
    ``lower_order_final``: with fewer than 15 steps the ``k``-th last step has predictor order
    at most ``k``.
    """

    name = "exppc"
    needs_schedule = True

    def __init__(self, steps: int = 18, *, order: int = 3, corrector: bool = True,
                 lower_order_final: bool = True, **kwargs):
        super().__init__(steps=steps, **kwargs)
        if int(order) not in (1, 2, 3, 4):
            raise ValueError(f"solver.order must be 1, 2, 3 or 4, got {order}")
        self.order = int(order)
        self.corrector = bool(corrector)
        self.lower_order_final = bool(lower_order_final)

    def step(self, flow, x, times, i, state):
        a, s, lam = schedule_arrays(flow.schedule, times, state)
        n = len(times) - 1
        # D at (the predicted) x_i, when the previous step's corrector already evaluated it
        den = state.pop("den", None)
        if den is None:
            den = flow.denoiser(x, state["t"][i])
        history = push_history(state, lam[i], den, self.order)
        h = lam[i + 1] - lam[i]
        ratio, a1 = s[i + 1] / s[i], a[i + 1]
        if not math.isfinite(h) or not history:  # from a = 0: the exact first-order step
            x_pred = ratio * x + a1 * den
            past = []
        else:
            p = len(history)
            if self.lower_order_final and n < LOWER_ORDER_FINAL_BELOW:
                p = min(p, n - i)
            past = history[-p:]
            x_pred = ratio * x + a1 * self._combine(past, lam[i], h)
        # No corrector at the grid's end (its call would be extra), nor before the last step to
        # t = 0: that step is a(0)·D(x_pred, t_min) either way (the corrected state is only used
        # through D at the predicted one), so the corrector's call would be wasted.
        if not self.corrector or i + 1 >= n or times[i + 2] == 0:
            return x_pred
        den_next = flow.denoiser(x_pred, state["t"][i + 1])
        state["den"] = den_next
        if past and math.isfinite(lam[i + 1]):
            nodes = [*history[-self.order:], (lam[i + 1], den_next)]
            return ratio * x + a1 * self._combine(nodes, lam[i], h)
        return x_pred

    @staticmethod
    def _combine(nodes, lam0: float, h: float):
        w = exp_weights([lj - lam0 for lj, _ in nodes], h)
        out = w[0] * nodes[0][1]
        for wj, (_, dj) in zip(w[1:], nodes[1:]):
            out = out + wj * dj
        return out

    def describe(self) -> dict:
        return {**super().describe(), "order": self.order, "corrector": self.corrector,
                "lower_order_final": self.lower_order_final}


__all__ = ["ExpPC", "exp_weights", "scaled_exp_moments"]
