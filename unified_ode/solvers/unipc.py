"""UniPC (Zhao et al. 2023): unified predictor–corrector in denoiser form, B(h) variants.

For an affine field ``x = a(t) y + s(t) ε`` with ``λ = log(a/s)``, the step from ``t_i`` to
``t_{i+1}`` (``h = λ_{i+1} − λ_i``) is exactly (see :mod:`.multistep`)

    x_{i+1} = (s_{i+1}/s_i) x_i + a_{i+1} ∫_0^h e^{−(h−u)} D(λ_i + u) du.

With ``m₀ = D`` at the current point and past values ``m_k`` at ``λ_i + r_k h`` (``r_k < 0``),
UniPC writes the integral as the first-order (DDIM) term plus a correction through the
divided differences ``D_k = (m_k − m₀)/r_k``:

    x̃ = (s'/s) x + a' (1 − e^{−h}) m₀ − a' B(h) Σ_k ρ_k D_k.

``B(h)`` is ``−h`` (``bh1``) or ``e^{−h} − 1`` (``bh2``); the ``ρ_k`` solve the order
conditions ``Σ_k ρ_k r_k^{j−1} = j! g_j(h)/B(h)`` (``j = 1…``), with
``g_j = Σ_{n>j} (−h)^{n−j}/n!`` (the φ-functions of the exponential integrator). The
**predictor** UniP-p uses ``m₀`` and ``p − 1`` past values (order ``p``; ``ρ = 1/2`` for
``p = 2``, as published); the **corrector** UniC-p redoes the same step with the denoiser at
the predicted state as one more node (``r = 1``), raising the order to ``p + 1``. That value
is the one the next step needs anyway, so the corrector costs no network call: NFE = steps.
The next step starts from the *corrected* state with the denoiser value at the *predicted*
one (as published).

Like :class:`~unified_ode.solvers.pc.ExpPC`: no corrector on the grid's last step, nor on the
step before the exact step to ``t = 0`` (the last step uses the denoiser at the predicted
state either way); a step from ``a = 0`` (``λ = −∞``, rectified flow at ``t = 1``) is the
exact limit ``x' = (s'/s) x + a' D`` and starts a fresh history; with ``lower_order_final``
and fewer than 15 steps the ``k``-th last step has order at most ``k``.
"""

from __future__ import annotations

import math

import torch

from unified_ode.solvers.base import Solver
from unified_ode.solvers.multistep import LOWER_ORDER_FINAL_BELOW, schedule_arrays

VARIANTS = ("bh1", "bh2")


def phi_series(h: float, k: int) -> list[float]:
    """``g_j = Σ_{n ≥ j+1} (−h)^{n−j} / n!`` for ``j = 1…k`` (float64): a series for
    ``h < 1`` (no cancellation), the recursion ``g_{j+1} = g_j/(−h) − 1/(j+1)!`` from
    ``g_1 = expm1(−h)/(−h) − 1`` otherwise."""
    hh = -float(h)
    if abs(hh) < 1.0:
        out = []
        for j in range(1, k + 1):
            total, term, n = 0.0, hh / math.factorial(j + 1), j + 1
            while abs(term) > 1e-20 * max(abs(total), 1e-300) and n < j + 60:
                total += term
                n += 1
                term *= hh / n
            out.append(total)
        return out
    out = [math.expm1(hh) / hh - 1.0]
    for j in range(1, k):
        out.append(out[-1] / hh - 1.0 / math.factorial(j + 1))
    return out


def b_of_h(h: float, variant: str) -> float:
    """UniPC's ``B(h)`` in the data-prediction form: ``−h`` (bh1) or ``e^{−h} − 1`` (bh2)."""
    if variant == "bh1":
        return -float(h)
    if variant == "bh2":
        return math.expm1(-float(h))
    raise ValueError(f"solver.variant must be one of {VARIANTS}, got {variant!r}")


def unipc_rhos(rks: list[float], h: float, variant: str, corrector: bool) -> list[float]:
    """UniPC's ``ρ`` for nodes at relative offsets ``rks`` (past nodes, each ``r_k < 0``, in
    units of ``h``) — and, with ``corrector``, the new node at ``r = 1`` appended last.
    Predictor (``p = len(rks) + 1`` nodes with ``m₀``): none for ``p = 1``, ``[1/2]`` for
    ``p = 2``, else the ``(p−1)``-system. Corrector: ``[1/2]`` with no past node, else the
    full system."""
    nodes = list(rks) + ([1.0] if corrector else [])
    k = len(nodes)
    if k == 0:
        return []
    if k == 1:
        return [0.5]
    g = phi_series(h, k)
    bh = b_of_h(h, variant)
    b = torch.tensor([g[j] * math.factorial(j + 1) / bh for j in range(k)], dtype=torch.float64)
    r = torch.tensor(nodes, dtype=torch.float64)
    R = torch.stack([r**j for j in range(k)])
    return torch.linalg.solve(R, b).tolist()


def unipc_weights(rks: list[float], h: float, variant: str, corrector: bool) -> list[float]:
    """The step as weights on denoiser values: ``x' = (s'/s) x + a' Σ_j w_j m_j`` with the
    values ordered ``[past (as rks)..., m₀, (m_new with corrector)]`` (float64). The
    weights sum to ``1 − e^{−h}`` (exact for a constant denoiser)."""
    rhos = unipc_rhos(rks, h, variant, corrector)
    nodes = list(rks) + ([1.0] if corrector else [])
    bh = b_of_h(h, variant) if rhos else 0.0
    w_nodes = [-bh * rho / r for rho, r in zip(rhos, nodes)]
    w0 = -math.expm1(-h) - sum(w_nodes)
    past, new = w_nodes[:len(rks)], w_nodes[len(rks):]
    return [*past, w0, *new]


class UniPC(Solver):
    """UniPC of ``order`` 1–3 (predictor order; the corrector adds one) with ``variant``
    ``bh1`` or ``bh2``, in denoiser form for affine fields; NFE = steps.

    Extra parameters: ``order``, ``variant``, ``corrector`` (false: UniP alone),
    ``lower_order_final``.
    """

    name = "unipc"
    needs_schedule = True

    def __init__(self, steps: int = 10, *, order: int = 3, variant: str = "bh2",
                 corrector: bool = True, lower_order_final: bool = True, **kwargs):
        super().__init__(steps=steps, **kwargs)
        if int(order) not in (1, 2, 3):
            raise ValueError(f"solver.order must be 1, 2 or 3, got {order}")
        if variant not in VARIANTS:
            raise ValueError(f"solver.variant must be one of {VARIANTS}, got {variant!r}")
        self.order = int(order)
        self.variant = variant
        self.corrector = bool(corrector)
        self.lower_order_final = bool(lower_order_final)

    def step(self, flow, x, times, i, state):
        a, s, lam = schedule_arrays(flow.schedule, times, state)
        n = len(times) - 1
        den = state.pop("den", None)  # D at the predicted x_i, from the previous corrector
        if den is None:
            den = flow.denoiser(x, state["t"][i])
        history = state.setdefault("history", [])  # (lambda, D), newest last
        if math.isfinite(lam[i]):
            history.append((lam[i], den))
            del history[:-self.order]
        else:
            history.clear()
        h = lam[i + 1] - lam[i]
        ratio, a1 = s[i + 1] / s[i], a[i + 1]
        if not math.isfinite(h) or not history:  # from a = 0: the exact first-order step
            return ratio * x + a1 * den
        p = len(history)
        if self.lower_order_final and n < LOWER_ORDER_FINAL_BELOW:
            p = min(p, n - i)
        nodes = history[-p:]
        rks = [(lj - lam[i]) / h for lj, _ in nodes[:-1]]
        values = [dj for _, dj in nodes]
        x_pred = ratio * x + a1 * _combine(unipc_weights(rks, h, self.variant, False), values)
        if not self.corrector or i + 1 >= n or times[i + 2] == 0:
            return x_pred
        den_next = flow.denoiser(x_pred, state["t"][i + 1])
        state["den"] = den_next
        w = unipc_weights(rks, h, self.variant, True)
        return ratio * x + a1 * _combine(w, [*values, den_next])

    def describe(self) -> dict:
        return {**super().describe(), "order": self.order, "variant": self.variant,
                "corrector": self.corrector, "lower_order_final": self.lower_order_final}


def _combine(weights, values):
    out = weights[0] * values[0]
    for w, v in zip(weights[1:], values[1:]):
        out = out + w * v
    return out


__all__ = ["UniPC", "b_of_h", "phi_series", "unipc_rhos", "unipc_weights"]
