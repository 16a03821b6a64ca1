"""The exponential-power field: an affine field whose noise has a tunable tail (issue 17).

Designed with the unified method (THEORY.md §3): any isotropic noise law ``q`` gives the
straight-ray Green's field with kernel ``x = y + t·eps``, ``eps ~ q``, conditional velocity
``(x − y)/t`` and generative ODE ``dx/dt = (x − D(x, t))/t``. Here ``q`` is the
**exponential-power** (generalised Gaussian) law in ``R^d``

    q(eps) = β / (S_{d−1} α^d Γ(d/β)) · exp(−(||eps||/α)^β),

i.e. the radius ``R = ||eps||`` has ``(R/α)^β ~ Gamma(d/β, 1)``. The scale
``α = sqrt(d Γ(d/β) / Γ((d+2)/β))`` gives ``E[R²] = d``: unit variance per coordinate, like
``N(0, I)``, for every ``β``, so ``t`` is EDM's noise level ``σ`` and the radius grows like
``t·sqrt(d)`` as the Gaussian's does (PFGM's and the radial-profile fields' do not).

``β`` is the tail index: ``β = 2`` is exactly VE/EDM (Gaussian), ``β < 2`` heavier tails
(``β = 1``: radius ~ Gamma(d, α), Laplace-like; heavier than Gaussian, lighter than any
Student-t of PFGM++), ``β > 2`` lighter tails (``β → ∞``: uniform in the ball of radius
``α``). The field, exact posterior, solvers, couplings and likelihood all work unchanged
through :class:`~unified_ode.physics.base.AffineField`; the denoiser preconditioning is EDM's
at the (unit) per-coordinate level, which never looks at the clean data.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from unified_ode.physics.base import AffineField
from unified_ode.physics.noise import (
    NoiseLaw,
    log_sphere_area,
    sample_gamma,
    uniform_directions,
)


class ExpPowerNoise(NoiseLaw):
    """Isotropic exponential-power law ``q(eps) ∝ exp(−(||eps||/α)^β)`` with unit variance per
    coordinate (``α`` depends on the dimension ``d``; see the module docstring)."""

    isotropic = True

    def __init__(self, beta: float):
        beta = float(beta)
        if not (math.isfinite(beta) and beta > 0):
            raise ValueError(f"physics.beta (tail index) must be a positive number, got {beta}; "
                             "2 is Gaussian, below 2 heavier tails, above 2 lighter")
        self.beta = beta

    def alpha(self, dim: int) -> float:
        """Radius scale ``α`` in ``R^dim`` with ``E[||eps||²] = dim``."""
        b = self.beta
        return math.exp(0.5 * (math.log(dim) + math.lgamma(dim / b) - math.lgamma((dim + 2) / b)))

    def log_norm(self, dim: int) -> float:
        """``log`` of the normalising constant ``β / (S_{d−1} α^d Γ(d/β))``."""
        return (math.log(self.beta) - log_sphere_area(dim) - dim * math.log(self.alpha(dim))
                - math.lgamma(dim / self.beta))

    def sample_radius(self, n, dim, *, generator=None, device=None, dtype=torch.float32):
        g = sample_gamma(dim / self.beta, n, generator=generator, device=device,
                         dtype=torch.float64)
        return (self.alpha(dim) * g.pow(1.0 / self.beta)).to(dtype)

    def sample(self, shape, *, generator=None, device=None, dtype=torch.float32):
        dim = int(math.prod(shape[1:]))
        u = uniform_directions(shape[0], tuple(shape[1:]), generator=generator, device=device,
                               dtype=dtype)
        radius = self.sample_radius(shape[0], dim, generator=generator, device=device,
                                    dtype=dtype)
        return u * radius.view(shape[0], *([1] * (len(shape) - 1)))

    def log_prob_sqnorm(self, sqnorm, dim, *, inplace=False):
        a2, const = self.alpha(dim) ** 2, self.log_norm(dim)
        out = sqnorm if inplace else sqnorm.clone()
        return out.div_(a2).pow_(0.5 * self.beta).neg_().add_(const)

    def describe(self):
        return f"exponential-power(beta={self.beta:g}), unit variance per coordinate"


class ExpPowerField(AffineField):
    """Straight-ray field ``x = y + t·eps``, ``eps ~`` :class:`ExpPowerNoise` ``(β)``.

    Parameters
    ----------
    beta:
        Tail index ``β > 0`` (2: VE; smaller: heavier tails; larger: lighter).
    t_min, t_max:
        Range of ``t = σ`` (EDM's 0.002 to 80 by default).
    """

    name = "exppower"

    def __init__(self, beta: float = 2.0, t_min: float = 0.002, t_max: float = 80.0,
                 **kwargs):
        super().__init__(noise=ExpPowerNoise(beta), t_min=t_min, t_max=t_max, **kwargs)
        self.beta = self.noise.beta

    def t_from_sigma(self, sigma: Tensor) -> Tensor:
        return sigma

    def describe(self):
        return {**super().describe(), "beta": self.beta}
