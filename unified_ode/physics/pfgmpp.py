"""PFGM++: the Coulomb field of the data in d + D dimensions (THEORY.md §3–4).

Augmenting the data with ``D`` extra dimensions and taking the gravity of the data placed on
the ``D = 0`` subspace, the field's flux through the sphere of radius ``r`` in the extra
dimensions is the kernel

    p_r(x | y) ∝ (||x − y||² + r²)^(−(d + D)/2),

a multivariate Student-t with ``D`` degrees of freedom and scale ``σ = r / sqrt(D)``. So in
the time coordinate ``t = σ`` (EDM's noise level) the kernel is ``x = y + t·eps``,
``eps ~ StudentTNoise(dof=D)``: ``||eps||²/D = B/(1 − B)``, ``B ~ Beta(d/2, D/2)``. The
generative ODE is ``dx/dt = (x − D(x, t)) / t`` (straight rays), integrated from ``t_max`` to
``t_min``; the prior is the kernel at ``t_max`` centred at the origin.

``D = 1`` is PFGM (the (d+1)-dimensional Poisson field, :class:`PoissonField`); ``D → ∞``
tends to the Gaussian kernel of VE/EDM. The radius law is heavy-tailed for small ``D``, so
prior radii may be clipped into ``[lower, upper]`` (``physics.clip_radius``; ``null`` for
none). Clipping changes the prior: :meth:`prior_log_prob` is the density of the *unclipped*
law, and the clip is written into :meth:`describe`.
"""

from __future__ import annotations

import math

import torch

from unified_ode.physics.base import AffineField
from unified_ode.physics.noise import StudentTNoise


class PFGMPPField(AffineField):
    """PFGM++ with ``D >= 1`` extra dimensions. ``t`` is ``σ``; the extra-dimension radius is
    ``r = σ·sqrt(D)`` (:meth:`r`).

    Parameters
    ----------
    D:
        Number of extra dimensions (any real ``D >= 1``; PFGM++ uses 128 or 2048 on CIFAR-10).
    t_min, t_max:
        Range of ``σ`` (EDM's 0.002 to 80 by default).
    clip_radius:
        ``None`` (no clipping) or ``(lower, upper)``: prior samples whose norm falls outside
        are rescaled onto the nearest bound; either bound may be ``None``.
    """

    name = "pfgmpp"

    def __init__(self, D: float = 128.0, t_min: float = 0.002, t_max: float = 80.0,
                 clip_radius: tuple[float | None, float | None] | None = None, **kwargs):
        if not float(D) >= 1.0:
            raise ValueError(f"physics.D must be >= 1 (PFGM++ extra dimensions), got {D}")
        self.D = float(D)
        super().__init__(noise=StudentTNoise(self.D), t_min=t_min, t_max=t_max, **kwargs)
        if clip_radius is not None:
            clip_radius = tuple(clip_radius)
            if len(clip_radius) != 2:
                raise ValueError("physics.clip_radius must be null or [lower, upper]")
            lo, hi = clip_radius
            if lo is not None and hi is not None and not lo < hi:
                raise ValueError(f"physics.clip_radius needs lower < upper, got {clip_radius}")
        self.clip_radius = clip_radius

    def r(self, t):
        """PFGM++'s extra-dimension radius ``r = σ sqrt(D)`` at time ``t = σ``."""
        return t * math.sqrt(self.D)

    def t_from_sigma(self, sigma):
        return sigma

    def sample_prior(self, n, shape, *, generator=None, device=None, dtype=torch.float32):
        x = super().sample_prior(n, shape, generator=generator, device=device, dtype=dtype)
        if self.clip_radius is None:
            return x
        lo, hi = self.clip_radius
        norm = x.flatten(1).norm(dim=1)
        clipped = norm.clamp(min=lo, max=hi)
        return x * (clipped / norm.clamp_min(1e-30)).view(n, *([1] * len(shape)))

    def describe(self):
        return {**super().describe(), "D": self.D, "clip_radius": self.clip_radius}
