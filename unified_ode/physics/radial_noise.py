"""Radial-profile noise laws (THEORY.md §5): ``eps = R u`` with ``u`` uniform on the unit
sphere and the radius ``R`` drawn from a profile given by its CDF (:class:`RadialProfile`),
with the built-in profiles ``tanh`` and ``exp`` (:data:`PROFILES`).

Only torch is imported here: this layer is usable from a notebook.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from unified_ode.physics.noise import (
    NoiseLaw,
    invert_increasing,
    log_sphere_area,
    uniform_directions,
)


class RadialProfile:
    """A law of the radius ``R >= 0`` given by its CDF ``F`` (the profile ψ of THEORY.md §4).

    Parameters
    ----------
    cdf:
        ``F(s)``: increasing torch function with ``F(0) = 0`` and ``F(s) -> 1``; elementwise on
        float64 tensors, differentiable by autograd when ``log_density`` is not given.
    log_density:
        Optional ``log F'(s)``; default: the log of ``F``'s autograd derivative. Give it when
        ``F'`` underflows in the tail (a closed form in log space keeps far points finite).
    inverse:
        Optional ``F^{-1}(u)``; default: bisection (:func:`invert_increasing`).
    second_moment:
        Optional ``E[R^2]``; default: the mean of ``F^{-1}(u)^2`` over 4096 mid-quantiles
        (used only to scale the preconditioning).
    name:
        Name for logs.
    """

    def __init__(self, cdf, *, log_density=None, inverse=None, second_moment=None,
                 name: str = "user"):
        self._cdf = cdf
        self._log_density = log_density
        self._inverse = inverse
        self.name = name
        self._m2 = None if second_moment is None else float(second_moment)

    def cdf(self, s: Tensor) -> Tensor:
        return self._cdf(s)

    def log_density(self, s: Tensor) -> Tensor:
        """``log F'(s)`` elementwise."""
        if self._log_density is not None:
            return self._log_density(s)
        with torch.enable_grad():
            s_ = s.detach().clone().requires_grad_(True)
            f = self._cdf(s_)
            if not f.requires_grad:
                raise ValueError(f"radial profile {self.name!r}: its CDF is not differentiable "
                                 "by autograd; write it with torch operations or give "
                                 "log_density")
            (grad,) = torch.autograd.grad(f.sum(), s_)
        return torch.log(grad)

    def inverse(self, u: Tensor) -> Tensor:
        """``F^{-1}(u)`` elementwise for ``u`` in ``[0, 1)``."""
        if self._inverse is not None:
            return self._inverse(u)
        return invert_increasing(self._cdf, u)

    @property
    def second_moment(self) -> float:
        """``E[R^2]`` (estimated once from quantiles when not given)."""
        if self._m2 is None:
            u = (torch.arange(4096, dtype=torch.float64) + 0.5) / 4096
            self._m2 = float(self.inverse(u).pow(2).mean())
        return self._m2

    def check(self) -> None:
        """Raise ``ValueError`` unless ``F`` looks like a radius CDF (``F(0) = 0``, increasing,
        tending to 1, finite log-density)."""
        s = torch.logspace(-6, 3, 400, dtype=torch.float64)
        f = self.cdf(s)
        f0 = float(self.cdf(torch.zeros(1, dtype=torch.float64))[0])
        problems = []
        if abs(f0) > 1e-9:
            problems.append(f"F(0) = {f0:.3g}, must be 0")
        if not bool(torch.all(f[1:] >= f[:-1] - 1e-12)):
            problems.append("F is not increasing")
        if abs(float(f[-1]) - 1.0) > 1e-6:
            problems.append(f"F(1000) = {float(f[-1]):.6g}, must tend to 1")
        if not bool(torch.isfinite(self.log_density(s[:200])).all()):
            problems.append("log F' is not finite on (1e-6, 1)")
        if problems:
            raise ValueError(f"radial profile {self.name!r} is not a radius CDF: "
                             + "; ".join(problems))


def _tanh_log_density(s: Tensor) -> Tensor:
    # log sech^2(s) = 2 (log 2 − s − log(1 + e^{−2s})), exact in the far tail
    return 2.0 * (math.log(2.0) - s - torch.nn.functional.softplus(-2.0 * s))


#: ``ψ(s) = tanh(s)``: ``R = artanh(U)``; ``E[R²] = π²/12``.
TANH_PROFILE = RadialProfile(torch.tanh, log_density=_tanh_log_density, inverse=torch.atanh,
                             second_moment=math.pi**2 / 12, name="tanh")
#: ``ψ(s) = 1 − e^{−s}``: ``R ~ Exp(1)``; ``E[R²] = 2``.
EXP_PROFILE = RadialProfile(lambda s: -torch.expm1(-s), log_density=lambda s: -s,
                            inverse=lambda u: -torch.log1p(-u), second_moment=2.0, name="exp")
PROFILES = {"tanh": TANH_PROFILE, "exp": EXP_PROFILE}


class RadialProfileNoise(NoiseLaw):
    """Isotropic ``eps = R·u``: radius ``R ~ F`` (a :class:`RadialProfile`), direction ``u``
    uniform on the sphere (THEORY.md §4).

    Density in ``R^d``: ``q(eps) = F'(r) / (S_{d−1} r^{d−1})``, ``r = ||eps||``. The radius is
    O(1) whatever ``d``, so the spread per coordinate is ``sqrt(E[R²]/d)``
    (:meth:`coordinate_scale`); :attr:`scale` is 1, i.e. a field's ``sigma(t)`` is its radius
    scale ``s(t)``.
    """

    isotropic = True

    def __init__(self, profile: RadialProfile):
        self.profile = profile

    def sample(self, shape, *, generator=None, device=None, dtype=torch.float32):
        radius = self.sample_radius(shape[0], int(math.prod(shape[1:])), generator=generator,
                                    device=device, dtype=dtype)
        u = uniform_directions(shape[0], tuple(shape[1:]), generator=generator, device=device,
                               dtype=dtype)
        return u * radius.view(shape[0], *([1] * (len(shape) - 1)))

    def sample_radius(self, n, dim, *, generator=None, device=None, dtype=torch.float32):
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        return self.profile.inverse(u).to(dtype)

    def log_prob_sqnorm(self, sqnorm, dim, *, inplace=False):
        # the profile's log-density is a user function: computed out of place
        tiny = torch.finfo(sqnorm.dtype).tiny
        r = sqnorm.clamp_min(tiny).sqrt()
        return self.profile.log_density(r) - log_sphere_area(dim) - (dim - 1) * torch.log(r)

    def coordinate_scale(self, dim):
        return math.sqrt(self.profile.second_moment / dim)

    def describe(self):
        return f"radial profile {self.profile.name}"
