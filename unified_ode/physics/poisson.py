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

PFGM is PFGM++ with ``D = 1`` (:class:`~unified_ode.physics.pfgmpp.PFGMPPField`); this class
fixes ``D`` and adds PFGM's own objective, ``physics.objective=pfgm`` (THEORY.md §6): the
network regresses the *normalised* field ``sqrt(d)·E/(||E|| + γ)`` of the data at ``(x, t)``,
``E = −Σ_i w_i (x − y_i, t)`` with weights ``w_i ∝ ||(x, t) − (y_i, 0)||^(−(d+1))`` summing
to 1. These weights are exactly the posterior of the Poisson kernel, so
``E = −(x − D, t)`` with ``D`` the posterior mean (the denoiser), and ``E``'s t-component is
``−t`` whatever the data: only the x-part ``v`` (data-shaped, prediction kind
``"normalized_field"``) is predicted. PFGM's code predicts both parts and drives
``dx/dz = v_x / v_z``, replacing the predicted ``v_z`` near the data by one computed from
``||v_x||``; here that inversion is exact: from ``n = ||v||`` the norm ``ρ = ||x − D||``
solves ``n (sqrt(ρ² + t²) + γ) = sqrt(d) ρ``, and the drift is ``dx/dt = E_x/E_t =
(x − D)/t``, the same ODE as the denoiser form (:meth:`denoiser_from_normalized_field`).
"""

from __future__ import annotations

import math

import torch

from unified_ode.physics.base import bcast
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
    supported_objectives = ("denoiser", "velocity", "pfgm")

    def __init__(self, t_min: float = 0.002, t_max: float = 80.0,
                 clip_radius: tuple[float, float | None] | None = None,
                 pfgm: dict | None = None, **kwargs):
        super().__init__(D=1.0, t_min=t_min, t_max=t_max, clip_radius=clip_radius, **kwargs)
        #: PFGM objective settings (``physics.pfgm.*``): ``gamma`` (γ of the normalisation,
        #: 5 in PFGM), ``reference_size`` (clean reference batch, 4096), ``small_batch``
        #: (perturbed points per step, 128), ``chunk`` (reference rows per chunk).
        self.pfgm = {"gamma": 5.0, "reference_size": 4096, "small_batch": 128, "chunk": 1024}
        unknown = sorted(set(pfgm or {}) - set(self.pfgm))
        if unknown:
            raise ValueError(f"unknown physics.pfgm key(s) {unknown}; known: {sorted(self.pfgm)}")
        self.pfgm.update(pfgm or {})
        if not float(self.pfgm["gamma"]) >= 0:
            raise ValueError(f"physics.pfgm.gamma must be >= 0, got {self.pfgm['gamma']}")

    @property
    def prediction(self) -> str:
        return "normalized_field" if self.objective == "pfgm" else super().prediction

    # --- PFGM's normalised field (objective=pfgm) ------------------------------------------
    def normalized_field(self, x, t, denoised):
        """x-part ``v = −sqrt(d)(x − D)/(sqrt(||x − D||² + t²) + γ)`` of PFGM's normalised field
        for the denoiser ``D``; ``x``, ``denoised`` ``(B, *shape)``, ``t`` ``(B,)``."""
        d = math.prod(x.shape[1:])
        diff = x - denoised
        norm_e = (diff.flatten(1).pow(2).sum(1) + torch.as_tensor(t).pow(2)).sqrt()
        return -math.sqrt(d) * diff / bcast(norm_e + float(self.pfgm["gamma"]), x)

    def denoiser_from_normalized_field(self, x, t, v):
        """Inverse of :meth:`normalized_field` (in float64): ``D = x + v (sqrt(ρ² + t²) + γ)
        / sqrt(d)`` with ``ρ = n (sqrt(d) γ + sqrt((d − n²) t² + n² γ²)) / (d − n²)``,
        ``n = ||v|| < sqrt(d)`` (clamped just below)."""
        d = math.prod(x.shape[1:])
        gamma = float(self.pfgm["gamma"])
        v64 = v.double()
        t64 = torch.as_tensor(t, device=x.device).double().expand(x.shape[0])
        n2 = v64.flatten(1).pow(2).sum(1).clamp(max=d * (1 - 1e-12))
        n = n2.sqrt()
        rho = n * (math.sqrt(d) * gamma + ((d - n2) * t64**2 + n2 * gamma**2).sqrt()) / (d - n2)
        scale = ((rho**2 + t64**2).sqrt() + gamma) / math.sqrt(d)
        return (x.double() + v64 * bcast(scale, v64)).to(x.dtype)

    def prediction_from_denoiser(self, x, t, denoised):
        """The model output of kind :attr:`prediction` that corresponds to the denoiser
        ``denoised`` (used by the exact field)."""
        if self.prediction == "normalized_field":
            return self.normalized_field(x, t, denoised)
        if self.prediction == "velocity":
            return self.drift_from_denoiser(x, t, denoised)
        return denoised

    def drift(self, x, t, prediction):
        if self.prediction == "normalized_field":
            denoised = self.denoiser_from_normalized_field(x, t, prediction)
            return self.drift_from_denoiser(x, t, denoised)
        return super().drift(x, t, prediction)

    def describe(self):
        out = super().describe()
        if self.objective == "pfgm":
            out["pfgm"] = dict(self.pfgm)
        return out
