"""Linear field: rectified flow / flow matching by the method of characteristics (THEORY.md §3, §5).

Each source ``y`` is joined to a prior draw ``eps`` by a straight line,
``x = (1 − t) y + t·eps``, ``t ∈ [0, 1]``: ``a = 1 − t``, ``s = t``. The conditional velocity
along it is ``v = eps − y = (x − y) / t``; the generative drift is ``(x − D(x, t)) / t`` in
denoiser form or the regressed velocity itself (flow matching, the default objective).
At ``t = 1`` the kernel no longer depends on ``y``: the prior is the noise law ``q`` itself,
exactly, so ``t_max = 1``.

``q`` is ``N(0, I)`` (``prior=gaussian``) or uniform on the cube ``[−h, h]^d``
(``prior=uniform``; ``h = sqrt(3)``, unit variance per coordinate). The uniform kernel has
bounded support: the exact field's posterior is uniform over the data points whose shrinking
cube contains ``x`` (and, for a point a solver step has put just outside every cube, the
nearest cube's point: see :meth:`LinearField.pairwise_kernel_log_prob`).

Because ``a(1) = 0``, the preconditioning is written in ``x`` directly (``input_scale = 1``)
rather than in ``x/a``: ``c_in = 1/sqrt(s² q² + a² sd²)``, ``c_skip = a sd² c_in²``,
``c_out = s q sd c_in``, ``c_noise = t``.
"""

from __future__ import annotations

import torch

from unified_ode.physics.base import AffineField
from unified_ode.physics.noise import GaussianNoise, UniformCubeNoise, event_dim
from unified_ode.timegrid import make_grid

PRIORS = ("gaussian", "uniform")
TIME_LAWS = ("uniform", "lognormal")


class LinearField(AffineField):
    """Rectified flow: ``x = (1 − t) y + t eps``.

    Parameters
    ----------
    prior:
        ``"gaussian"`` (N(0, I)) or ``"uniform"`` (cube ``[−h, h]^d``).
    half_width:
        ``h`` of the uniform cube (default ``sqrt(3)``: unit variance per coordinate).
    t_min:
        Last time of the ODE before the final step to 0.
    train_time_law:
        ``"uniform"`` (``t ~ U(0, 1)``, rectified flow) or ``"lognormal"`` (EDM's
        ``ln σ ~ N(p_mean, p_std²)`` with ``σ = t/(1−t)``). ``None`` (default): the
        objective's own law — uniform for the velocity objective, lognormal for the denoiser
        objective (whose weight ``1/c_out²`` grows like ``1/t²``).
    """

    name = "linear"

    def __init__(self, prior: str = "gaussian", half_width: float = 3.0 ** 0.5,
                 t_min: float = 1e-3, t_max: float = 1.0, train_time_law: str | None = None,
                 **kwargs):
        if prior not in PRIORS:
            raise ValueError(f"physics.prior={prior!r} is not a linear-field prior; choose "
                             f"one of {list(PRIORS)}")
        if t_max != 1.0:
            raise ValueError(f"linear field: t_max must be 1 (the prior is reached exactly at "
                             f"t = 1), got {t_max}")
        noise = GaussianNoise() if prior == "gaussian" else UniformCubeNoise(half_width)
        super().__init__(noise=noise, t_min=t_min, t_max=t_max, **kwargs)
        self.prior = prior
        if train_time_law is not None and train_time_law not in TIME_LAWS:
            raise ValueError(f"physics.train_time_law={train_time_law!r}; choose null (the "
                             f"objective's own law) or one of {list(TIME_LAWS)}")
        self.train_time_law = train_time_law

    # schedule ---------------------------------------------------------------------------
    def a(self, t):
        return 1.0 - t

    def s(self, t):
        return t

    def da(self, t):
        return -torch.ones_like(t)

    def ds(self, t):
        return torch.ones_like(t)

    def t_from_sigma(self, sigma):
        # sigma = s/a · q  ->  t/(1 − t) = sigma/q
        ratio = torch.as_tensor(sigma) / self.noise.scale
        return ratio / (1.0 + ratio)

    # exact posterior with a bounded kernel ---------------------------------------------
    def pairwise_kernel_log_prob(self, x, y, t):
        """As :meth:`Field.pairwise_kernel_log_prob`; for the uniform prior, pairs outside the
        cube get a floored log-density (:meth:`UniformCubeNoise.log_prob_floored`) instead of
        ``−inf``. Its ``exp`` is still exactly 0, so the exact posterior of any point in the
        support of ``p_t`` is unchanged; a point that a solver step has put just outside every
        cube follows the nearest cube's source rather than stopping the exact field."""
        if self.prior != "uniform":
            return super().pairwise_kernel_log_prob(x, y, t)
        n, m = x.shape[0], y.shape[0]
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(n)
        a, s = self.a(t), self.s(t)
        xf, yf = x.flatten(1), y.flatten(1)
        eps = (xf[:, None, :] - a[:, None, None] * yf[None, :, :]) / s[:, None, None]
        logq = self.noise.log_prob_floored(eps.reshape(n * m, -1)).view(n, m)
        return logq - xf.shape[1] * torch.log(s)[:, None]

    def has_isotropic_kernel(self):
        # the override above changes only the uniform prior's (non-isotropic) kernel
        return self.noise.isotropic

    # preconditioning (finite at t = 1, where a = 0) ------------------------------------
    def input_scale(self, t):
        return torch.ones_like(torch.as_tensor(t))

    def denoiser_coefficients(self, x, t, sigma_data):
        q = self.noise.coordinate_scale(event_dim(x))
        a, s = self.a(t), self.s(t)
        c_in = ((s * q) ** 2 + (a * sigma_data) ** 2).rsqrt()
        c_skip = a * sigma_data**2 * c_in**2
        c_out = s * q * sigma_data * c_in
        return c_skip, c_out, c_in, t.clone()

    # training times and grid ------------------------------------------------------------
    def sample_training_time(self, n, *, generator=None, device=None, law_hint=None):
        """``train_time_law`` when set, else the objective's ``law_hint`` (velocity:
        uniform, denoiser: lognormal), else lognormal."""
        if (self.train_time_law or law_hint) == "uniform":
            # U(0, 1), kept off t = 0 where the denoiser weight 1/c_out² is infinite
            return torch.rand(n, generator=generator, device=device).clamp_min(1e-6)
        return super().sample_training_time(n, generator=generator, device=device)

    def default_grid(self, steps, *, final_step=True):
        """Uniform in ``t`` from 1 to ``t_min`` (plus a final step to 0)."""
        return make_grid("uniform", steps, self.t_min, self.t_max, final_step=final_step)

    def describe(self):
        return {**super().describe(), "prior": self.prior,
                "train_time_law": self.train_time_law or "by objective"}
