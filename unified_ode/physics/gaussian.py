"""The Gaussian (heat-equation) field: VE diffusion in EDM's parametrisation (THEORY.md §3).

Kernel ``x = y + t·eps``, ``eps ~ N(0, I)``; ``t`` is EDM's ``sigma``. It is the ``D -> inf``
limit of PFGM++. The ODE is ``dx/dt = (x − D(x, t)) / t`` from ``t_max = 80`` to ``t_min =
0.002``; the prior is ``N(0, t_max² I)``.
"""

from __future__ import annotations

from unified_ode.physics.base import AffineField
from unified_ode.physics.noise import GaussianNoise


class VEField(AffineField):
    """Variance-exploding Gaussian field (EDM). ``sigma(t) = t``."""

    name = "ve"

    def __init__(self, t_min: float = 0.002, t_max: float = 80.0, **kwargs):
        super().__init__(noise=GaussianNoise(), t_min=t_min, t_max=t_max, **kwargs)

    def t_from_sigma(self, sigma):
        return sigma
