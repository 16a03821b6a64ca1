"""General radial fields: a Green's field from any radial CDF ψ_t(r) (THEORY.md §5).

A field isotropic in ``x`` around its source ``y`` is fixed by the law of ``r = ||x − y||``
at each time: a CDF ``ψ_t(r)`` (increasing in ``r``, ``ψ_t(0) = 0``, ``ψ_t(∞) = 1``,
``ψ_t(r) → 1`` as ``t → 0`` for ``r > 0``). Then

    G_t = ϕ_t(r) = ∂_r ψ_t(r) / (S_{d−1} r^{d−1}),
    G_x = −∂_t ψ_t(r) / (S_{d−1} r^{d−1}) · (x − y)/r,

is divergence-free by construction, the kernel is ``p_t(x | y) = ϕ_t(r)`` and the conditional
velocity is

    v(x, t | y) = −(∂_t ψ / ∂_r ψ) · (x − y)/r.

For ``ψ_t(r) = F(r/t)`` this is ``(x − y)/t`` (:mod:`unified_ode.physics.radial`); for any
other ψ it is **not** affine in ``y``, so there is no denoiser form: the network regresses the
velocity (``objective=velocity``), and the exact field averages ``v`` itself under the
posterior.

Numerics. Everything is computed from the log-survival ``L_t(r) = log(1 − ψ_t(r))``, with
derivatives by autograd: ``log ∂_r ψ = L + log(−∂_r L)`` and ``∂_t ψ / ∂_r ψ =
∂_t L / ∂_r L`` stay finite far in the tail where ``1 − ψ`` underflows. A user ψ
(``physics.psi=pkg.mod:fn``, ``fn(r, t)`` on float64 tensors, elementwise) gets
``L = log1p(−ψ)``, accurate until ``ψ`` rounds to 1; give ``physics.log_survival=pkg.mod:fn``
for a tail-exact form. The kernel sampler inverts ``ψ_t`` by bisection.

Built-in ψ (``psi=mixture``): a time-dependent mixture of the two built-in profiles,

    ψ_t(r) = w(t) tanh(r/t) + (1 − w(t)) (1 − e^{−r/t}),   w(t) = 1 / (1 + t/τ),

``tanh``-shaped near the data, ``exp``-shaped (heavier tail) near the prior. Since the shape
of the radius law changes with ``t`` it is not of the form ``F(r/s(t))``, and its velocity
``r/t + t τ (F_tanh − F_exp) / ((t + τ)² ∂_s ψ)`` along ``(x − y)/r`` bends the speed of
every ray according to its radius.

The radius is O(t): ``t_max`` must make the prior radius dwarf the data's spread, as for
:mod:`~unified_ode.physics.radial`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from unified_ode.errors import UserError
from unified_ode.physics.base import Field, bcast, edm_coefficients, sq_dists
from unified_ode.physics.noise import (
    event_dim,
    invert_increasing,
    log_sphere_area,
    uniform_directions,
)
from unified_ode.physics.radial import import_callable

LOG2 = math.log(2.0)


def mixture_log_survival(r: Tensor, t: Tensor, tau: float = 1.0) -> Tensor:
    """``log(1 − ψ_t(r))`` of the built-in mixture, exact in the tail (float64 tensors)."""
    s = r / t
    log_w = -torch.log1p(t / tau)
    log_1mw = torch.log(t / tau) + log_w
    log_sf_tanh = LOG2 - 2.0 * s - F.softplus(-2.0 * s)  # log(1 − tanh s)
    log_sf_exp = -s
    return torch.logaddexp(log_w + log_sf_tanh, log_1mw + log_sf_exp)


class RadialGeneralField(Field):
    """A field defined by a radial CDF ``ψ_t(r)``; trained with the velocity objective only.

    Parameters
    ----------
    psi:
        ``"mixture"`` (built-in, see the module docstring) or ``"pkg.mod:fn"`` naming
        ``ψ(r, t)`` (elementwise on float64 tensors, differentiable by autograd).
    log_survival:
        Optional ``"pkg.mod:fn"`` naming ``log(1 − ψ(r, t))`` (tail-exact); for a user ψ.
    tau:
        Time scale ``τ`` of the built-in mixture weight ``w(t) = 1/(1 + t/τ)``.
    t_min, t_max:
        Time range; ``t`` is the radius scale and ``sigma(t) = t``.
    """

    name = "radial_general"

    def __init__(self, psi: str = "mixture", log_survival=None, tau: float = 1.0,
                 t_min: float = 0.002, t_max: float = 100.0, **kwargs):
        super().__init__(t_min=t_min, t_max=t_max, **kwargs)
        if not tau > 0:
            raise ValueError(f"physics.tau must be positive, got {tau}")
        self.tau = float(tau)
        if log_survival is not None:
            self._log_survival = import_callable(log_survival, "physics.log_survival")
            self.psi_name = str(psi)
        elif psi == "mixture":
            self._log_survival = lambda r, t: mixture_log_survival(r, t, self.tau)
            self.psi_name = "mixture"
        elif callable(psi) or (isinstance(psi, str) and (":" in psi or "." in psi)):
            cdf = import_callable(psi, "physics.psi")
            self._log_survival = lambda r, t: torch.log1p(-cdf(r, t))
            self.psi_name = getattr(cdf, "__name__", str(psi))
        else:
            raise UserError(f"physics.psi={psi!r} is neither the built-in 'mixture' nor an "
                            "importable callable psi(r, t) (package.module:function)")
        self._check_psi()
        u = (torch.arange(1024, dtype=torch.float64) + 0.5) / 1024
        radii = self._inverse(u, torch.ones_like(u))
        #: RMS kernel radius at t = 1 (radii are O(t)): scales the preconditioning.
        self.radius_rms = float(radii.pow(2).mean().sqrt())

    # --- the radial CDF and its derivatives --------------------------------------------------
    def log_survival(self, r: Tensor, t: Tensor) -> Tensor:
        """``log(1 − ψ_t(r))`` elementwise (``r``, ``t`` broadcastable float64 tensors)."""
        return self._log_survival(r, t)

    def psi(self, r: Tensor, t: Tensor) -> Tensor:
        """The radial CDF ``ψ_t(r)``."""
        return -torch.expm1(self.log_survival(r, t))

    def _derivatives(self, r: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(L, ∂_r L, ∂_t L)`` at float64 ``r``, ``t`` of one shape, by autograd."""
        with torch.enable_grad():
            r_ = r.detach().to(torch.float64).requires_grad_(True)
            t_ = t.detach().to(torch.float64).requires_grad_(True)
            logsf = self.log_survival(r_, t_)
            dr, dt = torch.autograd.grad(logsf.sum(), (r_, t_), allow_unused=True)
        dt = torch.zeros_like(r_) if dt is None else dt
        if dr is None:
            raise ValueError(f"physics.psi={self.psi_name}: ψ does not depend on r")
        return logsf.detach(), dr, dt

    def log_radial_density(self, r: Tensor, t: Tensor, dim: int) -> Tensor:
        """``log ϕ_t(r) = log ∂_r ψ − log S_{d−1} − (d − 1) log r`` (float64, same shape)."""
        tiny = torch.finfo(torch.float64).tiny
        r = r.to(torch.float64).clamp_min(tiny)
        logsf, dr, _ = self._derivatives(r, t.to(torch.float64).expand_as(r))
        out = logsf + torch.log(-dr) - log_sphere_area(dim) - (dim - 1) * torch.log(r)
        return torch.where(torch.isnan(out), torch.full_like(out, -math.inf), out)

    def radial_speed(self, r: Tensor, t: Tensor) -> Tensor:
        """``dr/dt = −∂_t ψ / ∂_r ψ`` along a field line at radius ``r`` (float64)."""
        _, dr, dt = self._derivatives(r.to(torch.float64), t.to(torch.float64).expand_as(r))
        return torch.nan_to_num(-dt / dr)

    def _inverse(self, u: Tensor, t: Tensor) -> Tensor:
        """Radii with ``ψ_t(R) = u`` (bisection on ``−L``, which increases from 0)."""
        target = -torch.log1p(-u.to(torch.float64))
        t = t.to(torch.float64)
        return invert_increasing(lambda r: -self.log_survival(r, t), target)

    def _check_psi(self) -> None:
        r = torch.logspace(-4, 3, 200, dtype=torch.float64)
        problems = []
        for t_val in (self.t_min, 1.0, self.t_max):
            t = torch.full_like(r, t_val)
            logsf = self.log_survival(r, t)
            at0 = float(self.log_survival(torch.zeros(1, dtype=torch.float64),
                                          torch.full((1,), t_val, dtype=torch.float64))[0])
            if abs(at0) > 1e-9:
                problems.append(f"ψ_t(0) = {-math.expm1(at0):.3g} at t = {t_val:g}, must be 0")
            if not bool(torch.all(logsf[1:] <= logsf[:-1] + 1e-12)):
                problems.append(f"ψ_t is not increasing in r at t = {t_val:g}")
        far = float(self.log_survival(torch.tensor([1e3 * self.t_max], dtype=torch.float64),
                                      torch.tensor([self.t_max], dtype=torch.float64))[0])
        if far > math.log(1e-6):
            problems.append("ψ_t(r) does not tend to 1 as r grows (at t = t_max, r = 1000·t_max)")
        if problems:
            raise UserError(f"physics.psi={self.psi_name} is not a radial CDF: "
                            + "; ".join(problems))

    # --- kernel ------------------------------------------------------------------------------
    def sample_kernel(self, y, t, *, generator=None):
        n = y.shape[0]
        t = torch.as_tensor(t, dtype=torch.float64, device=y.device).expand(n)
        u = torch.rand(n, generator=generator, device=y.device, dtype=torch.float64)
        radius = self._inverse(u, t).to(y.dtype)
        direction = uniform_directions(n, tuple(y.shape[1:]), generator=generator,
                                       device=y.device, dtype=y.dtype)
        return y + direction * bcast(radius, y)

    def kernel_log_prob(self, x, y, t):
        r = (x - y).flatten(1).to(torch.float64).norm(dim=1)
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(x.shape[0])
        return self.log_radial_density(r, t, event_dim(x)).to(x.dtype)

    def pairwise_kernel_log_prob(self, x, y, t):
        r = sq_dists(x.flatten(1).to(torch.float64), y.flatten(1).to(torch.float64)).sqrt()
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(x.shape[0])
        out = self.log_radial_density(r, t[:, None].expand_as(r), event_dim(x))
        return out.to(x.dtype)

    def conditional_velocity(self, x, y, t):
        diff = (x - y).flatten(1)
        r = diff.to(torch.float64).norm(dim=1)
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(x.shape[0])
        speed = self.radial_speed(r, t)
        scale = torch.where(r > 0, speed / r.clamp_min(torch.finfo(torch.float64).tiny),
                            torch.zeros_like(r))
        return (diff * scale[:, None].to(x.dtype)).view_as(x)

    # --- prior: the kernel at t_max around the origin ---------------------------------------
    def sample_prior(self, n, shape, *, generator=None, device=None, dtype=torch.float32):
        zero = torch.zeros((n, *shape), device=device, dtype=dtype)
        t = torch.full((n,), self.t_max, dtype=torch.float64, device=device)
        return self.sample_kernel(zero, t, generator=generator)

    def prior_log_prob(self, x):
        t = torch.full((x.shape[0],), self.t_max, dtype=torch.float64, device=x.device)
        return self.kernel_log_prob(x, torch.zeros_like(x), t)

    # --- scales ------------------------------------------------------------------------------
    def sigma(self, t):
        return torch.as_tensor(t)

    def t_from_sigma(self, sigma):
        return sigma

    def denoiser_coefficients(self, x, t, sigma_data):
        """EDM's coefficients at the per-coordinate noise level ``t·radius_rms/sqrt(d)``
        (in velocity form only ``c_in`` and ``c_noise`` are used)."""
        level = self.sigma(t) * (self.radius_rms / math.sqrt(event_dim(x)))
        return edm_coefficients(level, sigma_data)

    def velocity_coefficients(self, x, t, sigma_data, coefficients=None):
        """Rays are nearly straight (speed ``≈ r/t``), so the velocity is preconditioned like
        that of a straight-ray field, ``v ≈ (x − D)/t``, with EDM's coefficients at the
        per-coordinate level above: ``v_skip = (1 − c_skip)/t``, ``v_out = −c_out/t``. The
        network learns the rest, including the bending of the rays."""
        c_skip, c_out, _, _ = coefficients or self.denoiser_coefficients(x, t, sigma_data)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        return (1 - c_skip) / t, -c_out / t

    def describe(self):
        return {**super().describe(), "psi": self.psi_name, "tau": self.tau,
                "radius_rms_at_t1": self.radius_rms}
