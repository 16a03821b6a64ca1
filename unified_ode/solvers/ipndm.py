"""iPNDM: Adams–Bashforth with fixed coefficients and a lower-order warm start.

The "improved pseudo numerical method" of Zhang & Chen (DEIS, 2023), the strongest few-step
sampler of Zhou et al. (2024, "Fast ODE-based sampling for diffusion models in around 5
steps"): the explicit Adams–Bashforth formula of order ``k = min(i + 1, order)`` at step ``i``
with the coefficients of an *equally spaced* grid,

    k = 1:  y' = y + h d₀
    k = 2:  y' = y + h (3 d₀ − d₋₁) / 2
    k = 3:  y' = y + h (23 d₀ − 16 d₋₁ + 5 d₋₂) / 12
    k = 4:  y' = y + h (55 d₀ − 59 d₋₁ + 37 d₋₂ − 9 d₋₃) / 24

(:data:`IPNDM_COEFFICIENTS`), applied on any grid (``variable_step: true`` uses the exact
variable-step weights of :mod:`.lms` instead). One network call per step, NFE = steps.

**The variable.** For an affine field ``x = a(t) y + s(t) ε`` the solver runs in EDM's
variables ``z = x/a``, ``σ = s/a``, where every affine field's ODE is the same,
``dz/dσ = (z − D)/σ = (x − a D)/s`` (the predicted noise ``ε̂``, smooth in ``σ``):
``y = z``, ``h = σ' − σ``, ``x' = a' z'``. Other fields run in their own time variable
(``y = x``, ``d`` = the drift, ``h = t' − t``).

**a = 0 at t_max** (rectified flow: the prior is reached exactly, σ = ∞): ``z`` is undefined
there, but the first-order step has a finite limit, ``x' = (s'/s) x + a' D`` (the DDIM step,
exact for the constant denoiser ``D = E[y]`` that holds at ``a = 0``). That step is taken and
the multistep history starts at the next grid point (its slope at σ = ∞ has no finite step to
be extrapolated over).

**Analytic first step** (``afs: true``, affine fields only; saves the first network call):
far from the data, ``E[y | x, t]`` is the data mean plus a shrunk ``z`` — for data
``N(μ, σ_d² I)`` exactly ``D = μ + σ_d²/(σ_d² + σ²) (z − μ)``. The solver uses ``μ = 0``
(standardised data; ``afs_mean`` otherwise: a number, or a tensor of one sample's shape such
as the training set's per-pixel mean) and ``σ_d = afs_sigma_data``:
``D ≈ μ + σ_d² a (x − a μ) / (a² σ_d² + s²)`` (``= μ`` with the default ``σ_d = 0``, and
exactly the mean at ``a = 0``). With a wrong ``μ`` the first step carries the error ``μ_true −
μ`` almost whole into the state at the next grid time (measured on 8×8 digits, pixel mean
−0.39, VE, NFE 5: FID@1k 27.5 with ``μ = 0`` against 11.8 without AFS). The error of this
guess is ``O(1/σ_max)`` per coordinate for data of unit scale: small for VE/PFGM-type
``σ_max ≥ 40``, zero for rectified flow when the data are centred, and *not* small for a
field whose ``t_max`` leaves σ of order 1 — use it only with a prior far from the data.
A grid of one step with ``final_step`` is just the exact last step (one call; no AFS).
"""

from __future__ import annotations

import math

import torch

from unified_ode.solvers.base import Solver
from unified_ode.solvers.lms import adams_bashforth_weights
from unified_ode.solvers.multistep import schedule_arrays

#: Adams–Bashforth coefficients for equal steps, newest slope first (order 1–4).
IPNDM_COEFFICIENTS = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


class IPNDM(Solver):
    """iPNDM (see the module docstring): fixed-coefficient Adams–Bashforth of ``order`` 1–4,
    in σ for affine fields and in ``t`` otherwise; NFE = steps (− 1 with ``afs``).

    Extra parameters: ``order``; ``variable_step`` (exact variable-step AB weights instead of
    the fixed ones); ``afs`` and ``afs_sigma_data`` (analytic first step); ``variable``:
    ``"auto"`` (σ when the flow has an affine schedule, else ``t``) or ``"t"`` (always the
    field's time, drift form).
    """

    name = "ipndm"
    VARIABLES = ("auto", "t")

    def __init__(self, steps: int = 10, *, order: int = 4, variable_step: bool = False,
                 afs: bool = False, afs_sigma_data: float = 0.0, afs_mean=0.0,
                 variable: str = "auto", **kwargs):
        super().__init__(steps=steps, **kwargs)
        if int(order) not in IPNDM_COEFFICIENTS:
            raise ValueError(f"solver.order must be 1, 2, 3 or 4, got {order}")
        if variable not in self.VARIABLES:
            raise ValueError(f"solver.variable must be one of {self.VARIABLES}, got "
                             f"{variable!r}")
        if not float(afs_sigma_data) >= 0:
            raise ValueError(f"solver.afs_sigma_data must be >= 0, got {afs_sigma_data}")
        if afs and variable == "t":
            raise ValueError("solver.afs needs the affine (σ) form; it cannot be used with "
                             "solver.variable=t")
        self.order = int(order)
        self.variable_step = bool(variable_step)
        self.afs = bool(afs)
        self.afs_sigma_data = float(afs_sigma_data)
        if not isinstance(afs_mean, torch.Tensor):
            afs_mean = float(afs_mean)
            if not math.isfinite(afs_mean):
                raise ValueError(f"solver.afs_mean must be finite, got {afs_mean}")
        self.afs_mean = afs_mean  # μ: a number, or a tensor of one sample's shape
        self.variable = variable

    def nfe_for_steps(self, steps: int) -> int:
        saved = 1 if self.afs and (int(steps) > 1 or not self.final_step) else 0
        return int(steps) - saved

    def step(self, flow, x, times, i, state):
        sigma_form = self.variable == "auto" and flow.schedule is not None
        if i == 0 and self.afs and not sigma_form:
            raise ValueError(f"solver.afs (analytic first step) needs an affine field "
                             f"(x = a(t) y + s(t) eps); physics={flow.name} is not one. Set "
                             "solver.afs=false.")
        history = state.setdefault("history", [])  # (variable, slope), newest first
        if not sigma_form:
            d = flow.drift(x, state["t"][i])
            return self._advance(x, d, float(times[i]), float(times[i + 1]), history)
        a, s, _ = schedule_arrays(flow.schedule, times, state)
        if i == 0 and self.afs:
            sd2 = self.afs_sigma_data ** 2
            mu = self.afs_mean
            if isinstance(mu, torch.Tensor):
                if tuple(mu.shape) != tuple(x.shape[1:]):
                    raise ValueError(f"solver.afs_mean has shape {tuple(mu.shape)}, but one "
                                     f"sample has shape {tuple(x.shape[1:])}: pass the mean "
                                     "of the training set (or a number)")
                mu = mu.to(dtype=x.dtype, device=x.device)
            den = mu + (sd2 * a[0] / (a[0] ** 2 * sd2 + s[0] ** 2)) * (x - a[0] * mu)
        else:
            den = flow.denoiser(x, state["t"][i])
        if a[i] == 0:  # σ = ∞: the exact limit of the first-order step; history starts later
            history.clear()
            return (s[i + 1] / s[i]) * x + a[i + 1] * den
        eps = (x - a[i] * den) / s[i]  # dz/dσ
        z = self._advance(x / a[i], eps, s[i] / a[i], s[i + 1] / a[i + 1], history)
        return a[i + 1] * z

    def _advance(self, y, d, v0: float, v1: float, history: list):
        """One AB step of ``y`` from variable value ``v0`` to ``v1`` with slope ``d`` at
        ``v0`` and the kept history."""
        history.insert(0, (v0, d))
        del history[self.order:]
        if self.variable_step:
            w = adams_bashforth_weights([v for v, _ in history], v0, v1)
        else:
            h = v1 - v0
            w = [h * c for c in IPNDM_COEFFICIENTS[len(history)]]
        out = y + w[0] * history[0][1]
        for wj, (_, dj) in zip(w[1:], history[1:]):
            out = out + wj * dj
        return out

    def describe(self) -> dict:
        return {**super().describe(), "order": self.order, "variable_step": self.variable_step,
                "afs": self.afs, "afs_sigma_data": self.afs_sigma_data,
                "afs_mean": (self.afs_mean if isinstance(self.afs_mean, float)
                             else f"tensor{tuple(self.afs_mean.shape)}"),
                "variable": self.variable}


__all__ = ["IPNDM", "IPNDM_COEFFICIENTS"]
