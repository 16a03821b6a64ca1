"""Noise laws ``q`` of the affine kernels ``x = a(t) y + s(t) eps, eps ~ q``.

A noise law is the one thing that distinguishes most physical fields from each other
(THEORY.md §3): Gaussian for the heat equation (VE/EDM/VP), multivariate Student-t with ``D``
degrees of freedom for PFGM++ (``D = 1`` is PFGM's multivariate Cauchy), a uniform cube or any
other easy law for rectified flow, and radial profiles for the new fields of §5.

Every law works on tensors of shape ``(B, *shape)``: ``sample`` draws ``eps`` of that shape and
``log_prob`` returns ``(B,)`` log-densities summed over all non-batch dimensions (nats).
Isotropic laws also expose ``log_prob_sqnorm``, the log-density as a function of ``||eps||^2``,
which lets the exact field compute pairwise posteriors from distances alone.

Only torch is imported here: this layer is usable from a notebook.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def event_dim(x: Tensor) -> int:
    """Number of data dimensions of a batch ``(B, *shape)``: ``prod(shape)``."""
    return int(math.prod(x.shape[1:]))


def sample_gamma(concentration: float, n: int, *, generator: torch.Generator | None = None,
                 device=None, dtype=torch.float32) -> Tensor:
    """Draw ``n`` samples of Gamma(concentration, 1) with an explicit generator.

    ``torch.distributions.Gamma`` cannot take a ``torch.Generator``; sampling must be
    reproducible from a seed, so this uses the Marsaglia–Tsang squeeze method (exact, vectorised
    rejection), boosted by ``U^(1/alpha)`` for ``alpha < 1``.
    """
    if concentration <= 0:
        raise ValueError(f"Gamma concentration must be positive, got {concentration}")
    alpha = float(concentration)
    boost = alpha < 1.0
    a = alpha + 1.0 if boost else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, device=device, dtype=torch.float64)
    todo = torch.arange(n, device=device)
    while todo.numel() > 0:
        m = todo.numel()
        z = torch.randn(m, generator=generator, device=device, dtype=torch.float64)
        u = torch.rand(m, generator=generator, device=device, dtype=torch.float64)
        v = (1.0 + c * z) ** 3
        ok = (v > 0) & (torch.log(u.clamp_min(1e-300)) < 0.5 * z**2 + d - d * v
                        + d * torch.log(v.clamp_min(1e-300)))
        out[todo[ok]] = d * v[ok]
        todo = todo[~ok]
    if boost:
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        out = out * u ** (1.0 / alpha)
    return out.to(dtype)


def uniform_directions(n: int, shape: tuple[int, ...], *, generator=None, device=None,
                       dtype=torch.float32) -> Tensor:
    """``n`` directions uniform on the unit sphere of ``R^prod(shape)``, shaped ``(n, *shape)``."""
    g = torch.randn((n, *shape), generator=generator, device=device, dtype=dtype)
    norm = g.flatten(1).norm(dim=1).clamp_min(1e-30)
    return g / norm.view(n, *([1] * len(shape)))


class NoiseLaw:
    """Base class of noise laws. Subclasses set ``isotropic`` and implement the methods."""

    #: True when the density depends on ``eps`` only through ``||eps||``.
    isotropic: bool = False
    #: Per-coordinate scale of ``eps`` used to express the noise level in data units (the
    #: ``sigma`` of EDM preconditioning): 1 for N(0, I) and for the Student-t laws of PFGM++.
    scale: float = 1.0

    def sample(self, shape: tuple[int, ...], *, generator=None, device=None,
               dtype=torch.float32) -> Tensor:
        raise NotImplementedError

    def log_prob(self, eps: Tensor) -> Tensor:
        """Log-density of each row of ``eps`` ``(B, *shape)``; returns ``(B,)``."""
        if not self.isotropic:
            raise NotImplementedError
        return self.log_prob_sqnorm(eps.flatten(1).pow(2).sum(1), event_dim(eps))

    def log_prob_sqnorm(self, sqnorm: Tensor, dim: int) -> Tensor:
        """Log-density at any point with ``||eps||^2 = sqnorm`` in ``R^dim`` (isotropic laws)."""
        raise NotImplementedError(f"{type(self).__name__} is not isotropic")

    def mixture_precisions(self) -> Tensor | None:
        """For a Gaussian scale mixture ``eps = g / sqrt(w)`` (g ~ N(0, I)): a fixed, quasi-random
        float64 sample of ``w`` used to adapt EDM's preconditioning to the law (``None`` when the
        law is not such a mixture, or is Gaussian, ``w = 1``)."""
        return None

    def sample_radius(self, n: int, dim: int, *, generator=None, device=None,
                      dtype=torch.float32) -> Tensor:
        """``n`` draws of ``||eps||`` in ``R^dim`` (isotropic laws)."""
        eps = self.sample((n, dim), generator=generator, device=device, dtype=dtype)
        return eps.norm(dim=1)

    def describe(self) -> str:
        return type(self).__name__


class GaussianNoise(NoiseLaw):
    """``eps ~ N(0, I)``: the heat-equation kernel (VE, EDM, VP)."""

    isotropic = True

    def sample(self, shape, *, generator=None, device=None, dtype=torch.float32):
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def log_prob_sqnorm(self, sqnorm, dim):
        return -0.5 * dim * math.log(2 * math.pi) - 0.5 * sqnorm

    def describe(self):
        return "N(0, I)"


class StudentTNoise(NoiseLaw):
    """Multivariate Student-t with ``dof`` degrees of freedom and identity scale.

    ``q(eps) ∝ (1 + ||eps||^2 / dof)^(-(dof + d)/2)``. This is exactly the PFGM++ kernel with
    ``D = dof`` extra dimensions in units of ``sigma = r / sqrt(D)``; ``dof = 1`` is the
    multivariate Cauchy kernel of PFGM (the (d+1)-dimensional Coulomb field), and
    ``dof -> inf`` tends to ``N(0, I)``.

    Sampling: ``eps = g / sqrt(chi2_dof / dof)``, i.e. ``||eps||^2 / dof = B / (1 - B)`` with
    ``B ~ Beta(d/2, dof/2)`` (THEORY.md §4).
    """

    isotropic = True

    def __init__(self, dof: float):
        if dof <= 0:
            raise ValueError(f"Student-t degrees of freedom must be positive, got {dof}")
        self.dof = float(dof)

    def sample(self, shape, *, generator=None, device=None, dtype=torch.float32):
        g = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        chi2 = 2.0 * sample_gamma(self.dof / 2.0, shape[0], generator=generator, device=device,
                                  dtype=torch.float64)
        scale = torch.sqrt(self.dof / chi2).to(dtype)
        return g * scale.view(shape[0], *([1] * (len(shape) - 1)))

    def log_prob_sqnorm(self, sqnorm, dim):
        nu = self.dof
        const = (math.lgamma((nu + dim) / 2) - math.lgamma(nu / 2)
                 - 0.5 * dim * math.log(nu * math.pi))
        return const - 0.5 * (nu + dim) * torch.log1p(sqnorm / nu)

    def mixture_precisions(self):
        # eps = g / sqrt(w), w = chi2_dof / dof: a Gaussian scale mixture. A fixed draw (seeded)
        # keeps the preconditioning deterministic.
        if getattr(self, "_w", None) is None:
            g = torch.Generator().manual_seed(0)
            w = 2.0 * sample_gamma(self.dof / 2.0, 65536, generator=g,
                                   dtype=torch.float64) / self.dof
            # 256 strata means of the sorted draw: cheap per call, accurate for the bounded
            # functions of w that the preconditioning averages.
            self._w = torch.sort(w).values.view(256, -1).mean(1)
        return self._w

    def describe(self):
        return "multivariate Cauchy" if self.dof == 1 else f"Student-t(dof={self.dof:g})"
