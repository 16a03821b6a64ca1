"""PFGM: the Poisson field, gravity of the data in d+1 dimensions (THEORY.md §3–4).

The Green's field is the (d+1)-dimensional Coulomb field
``G ∝ (t, x − y) / (t² + ||x − y||²)^((d+1)/2)``; its flux through the plane at height ``t``
is the multivariate-Cauchy kernel ``x = y + t·eps``, ``eps = g/|h|`` (g ~ N(0, I_d),
h ~ N(0, 1)). The generative ODE is ``dx/dt = (x − D(x, t)) / t`` (straight rays, as in EDM),
integrated from ``t_max`` (PFGM's ``z_max``) to ``t_min``.

The prior is the kernel at ``t_max`` centred at the origin. Its radius law is heavy-tailed
(``R = t_max·sqrt(B/(1−B))``, ``B ~ Beta(d/2, 1/2)``); PFGM clips prior radii into
``[lower, upper]`` (``[1, 3000]`` on CIFAR-10). Clipping changes the prior, so it is a config
value (``physics.clip_radius``, ``null`` for none) and :meth:`prior_log_prob` is the density
of the *unclipped* law.
"""

from __future__ import annotations

import torch

from unified_ode.physics.base import AffineField
from unified_ode.physics.noise import StudentTNoise


class PoissonField(AffineField):
    """PFGM. ``t`` is PFGM's extra coordinate ``z``; ``sigma(t) = t`` (PFGM++ with D = 1).

    Parameters
    ----------
    clip_radius:
        ``None`` (no clipping) or ``(lower, upper)``: prior samples whose norm falls outside are
        rescaled onto the nearest bound. ``upper`` may be ``None`` for a lower bound only.
    """

    name = "poisson"

    def __init__(self, t_min: float = 0.002, t_max: float = 80.0,
                 clip_radius: tuple[float, float | None] | None = None, **kwargs):
        super().__init__(noise=StudentTNoise(1.0), t_min=t_min, t_max=t_max, **kwargs)
        if clip_radius is not None:
            clip_radius = tuple(clip_radius)
            if len(clip_radius) != 2:
                raise ValueError("physics.clip_radius must be null or [lower, upper]")
            lo, hi = clip_radius
            if lo is not None and hi is not None and not lo < hi:
                raise ValueError(f"physics.clip_radius needs lower < upper, got {clip_radius}")
        self.clip_radius = clip_radius

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
        return {**super().describe(), "clip_radius": self.clip_radius}
