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

PFGM is PFGM++ with ``D = 1`` (:class:`~unified_ode.physics.pfgmpp.PFGMPPField`). PFGM's own
training target, the normalised field ``sqrt(d)·E/(||E|| + γ)``, is a parametrisation
(``objective=pfgm_normalised``, :class:`unified_ode.parametrisation.PFGMNormalisedField`),
not part of the field.
"""

from __future__ import annotations

from unified_ode.physics.pfgmpp import PFGMPPField


class PoissonField(PFGMPPField):
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
        super().__init__(D=1.0, t_min=t_min, t_max=t_max, clip_radius=clip_radius, **kwargs)
