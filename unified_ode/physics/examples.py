"""Example fields for the validator: a deliberately invalid one (THEORY.md §3, last paragraph).

:class:`PowerLawField` is the power law ``G ∝ (t, x − y) / R^k`` with
``R = sqrt(t² + ||x − y||²)`` and ``k = d + 1 + exponent_offset``. Only ``k = d + 1`` (PFGM's
Coulomb field, ``exponent_offset = 0``) is divergence-free:

    ∂_t G_t + ∇_x·G_x = (d + 1 − k) / R^k,

and its flux through the plane at height ``t`` is ``t^(d+1−k)``, so for ``k ≠ d + 1`` the
"kernel" ``G_t`` is a probability density at ``t = 1`` only. ``python -m
unified_ode.app.validate physics=invalid_power_law`` must reject it (exit status 1); with
``physics.exponent_offset=0`` it is PFGM and passes.

Everything a generative model needs is still defined, so the field can be trained and sampled
like any other (it is a cautionary example, not a broken one): at each ``t`` the normalised
``G_t`` is a multivariate Student-t with ``ν = k − d = 1 + exponent_offset`` degrees of
freedom and scale ``t/sqrt(ν)`` — this is what :meth:`sample_kernel` draws and what the prior
is — and the velocity ``G_x / G_t = (x − y)/t`` is PFGM's. What is wrong is the log-density
:meth:`kernel_log_prob` = ``log G_t``, whose mass changes with ``t``.
"""

from __future__ import annotations

import math

import torch

from unified_ode.physics.base import AffineField
from unified_ode.physics.noise import StudentTNoise


class PowerLawField(AffineField):
    """``G ∝ (t, x − y) / R^(d+1+exponent_offset)``; invalid unless ``exponent_offset = 0``.

    Parameters
    ----------
    exponent_offset:
        ``k − (d + 1)``; must exceed −1 (``k > d``, so that ``G_t`` is integrable).
    t_min, t_max:
        Time range (PFGM's, 0.002 to 80, by default).
    """

    name = "invalid_power_law"

    def __init__(self, exponent_offset: float = 1.0, t_min: float = 0.002, t_max: float = 80.0,
                 **kwargs):
        if not exponent_offset > -1:
            raise ValueError("physics.exponent_offset must be > -1 (k > d), got "
                             f"{exponent_offset}")
        self.exponent_offset = float(exponent_offset)
        self.nu = 1.0 + self.exponent_offset
        super().__init__(noise=StudentTNoise(self.nu), t_min=t_min, t_max=t_max, **kwargs)

    # x = y + (t / sqrt(nu)) eps, eps ~ Student-t(nu): density ∝ (t² + r²)^(-k/2) at each t.
    def s(self, t):
        return t / math.sqrt(self.nu)

    def ds(self, t):
        return torch.ones_like(t) / math.sqrt(self.nu)

    def t_from_sigma(self, sigma):
        return sigma * math.sqrt(self.nu)

    def _log_flux(self, t):
        """``log ∫ G_t dx = (d + 1 − k) log t``: zero only for the Coulomb field."""
        return -self.exponent_offset * torch.log(torch.as_tensor(t))

    def kernel_log_prob(self, x, y, t):
        """``log G_t = log(c·t / R^k)``, normalised at ``t = 1`` only."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return super().kernel_log_prob(x, y, t) + self._log_flux(t)

    def pairwise_kernel_log_prob(self, x, y, t):
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return super().pairwise_kernel_log_prob(x, y, t) + self._log_flux(t)[:, None]

    def describe(self):
        return {**super().describe(), "exponent_offset": self.exponent_offset}
