"""VP: the variance-preserving probability-flow ODE of DDPM / score SDEs (THEORY.md §3).

Kernel ``x = a(t) y + s(t) eps``, ``eps ~ N(0, I)``, with the linear schedule
``β(t) = β_min + t (β_max − β_min)`` on ``t ∈ [t_min, 1]``:

    B(t) = ∫_0^t β = β_min t + (β_max − β_min) t² / 2,
    a(t) = exp(−B/2),   s(t) = sqrt(1 − a²) = sqrt(−expm1(−B)),
    a' = −β a / 2,      s' = β a² / (2 s).

The noise level in data units is ``σ = s/a = sqrt(expm1(B))``, inverted in closed form by
solving the quadratic ``B(t) = log(1 + σ²)``. The prior is ``N(0, I)`` (``a(1) ≈ 0.0066``,
``s(1) ≈ 1``; for unit-variance data it is exactly the second moment of the marginal at any
``t``). The drift is ``a' D + (s'/s)(x − a D)``; near ``t = 0``, ``s ∝ sqrt(t)``, so the
default grid is EDM's ρ-schedule in ``σ`` mapped back to ``t``.
"""

from __future__ import annotations

import torch

from unified_ode.physics.base import AffineField
from unified_ode.physics.noise import GaussianNoise
from unified_ode.timegrid import make_grid


class VPField(AffineField):
    """Variance-preserving field with a linear β schedule.

    Parameters
    ----------
    beta_min, beta_max:
        ``β(0)`` and ``β(1)`` (0.1 and 20, as in DDPM / score SDEs).
    t_min, t_max:
        Time range; ``t_max <= 1`` (the schedule is defined on ``[0, 1]``).
    """

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3,
                 t_max: float = 1.0, **kwargs):
        if not 0 < beta_min <= beta_max:
            raise ValueError(f"vp needs 0 < beta_min <= beta_max, got {beta_min}, {beta_max}")
        if t_max > 1.0:
            raise ValueError(f"vp: the β schedule is defined on [0, 1]; got t_max={t_max}")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)
        super().__init__(noise=GaussianNoise(), t_min=t_min, t_max=t_max, **kwargs)

    # schedule ---------------------------------------------------------------------------
    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integrated_beta(self, t):
        """``B(t) = ∫_0^t β``."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

    def a(self, t):
        return torch.exp(-0.5 * self.integrated_beta(t))

    def s(self, t):
        return torch.sqrt(-torch.expm1(-self.integrated_beta(t)))

    def da(self, t):
        return -0.5 * self.beta(t) * self.a(t)

    def ds(self, t):
        return 0.5 * self.beta(t) * self.a(t) ** 2 / self.s(t)

    # noise level ------------------------------------------------------------------------
    def sigma(self, t):
        return torch.sqrt(torch.expm1(self.integrated_beta(t)))

    def t_from_sigma(self, sigma):
        sigma = torch.as_tensor(sigma)
        target = torch.log1p(sigma * sigma)  # B(t)
        k = self.beta_max - self.beta_min
        if k == 0:
            return target / self.beta_min
        # positive root of (k/2) t² + β_min t − B = 0, written without cancellation
        return 2 * target / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * k * target))

    # prior: N(0, I) ---------------------------------------------------------------------
    def sample_prior(self, n, shape, *, generator=None, device=None, dtype=torch.float32):
        return self.noise.sample((n, *shape), generator=generator, device=device, dtype=dtype)

    def prior_log_prob(self, x):
        return self.noise.log_prob(x)

    # grids and training times -----------------------------------------------------------
    def default_grid(self, steps, *, final_step=True):
        """EDM's ρ = 7 grid in ``σ`` from ``σ(t_max)`` to ``σ(t_min)``, mapped to ``t`` (plus a
        final step to 0); the end points are exactly ``t_max`` and ``t_min``."""
        lo, hi = (float(self.sigma(torch.tensor(v, dtype=torch.float64)))
                  for v in (self.t_min, self.t_max))
        t = self.t_from_sigma(make_grid("edm", steps, lo, hi, rho=7.0, final_step=final_step))
        t[0] = self.t_max
        last = -2 if final_step else -1
        if t.shape[0] + last > 0:
            t[last] = self.t_min
        return t

    def describe(self):
        return {**super().describe(), "beta_min": self.beta_min, "beta_max": self.beta_max,
                "sigma_range": [float(self.sigma(torch.tensor(v))) for v in
                                (self.t_min, self.t_max)],
                "prior": "N(0, I)"}

