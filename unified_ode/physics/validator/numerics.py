"""Numerical tools of the validator: seeded draws, radial quadrature, KS statistics, and an
importance-sampling proposal. Torch only, float64 throughout.

The radial quadrature is the one place that turns an isotropic log-density into laws of the
radius: for a density ``p`` on ``R^d`` that depends on ``||x||`` only, the radius has density
``p(r e) S_{d−1} r^{d−1}`` (``S_{d−1}`` the area of the unit sphere), integrated here on a
log-spaced grid so that heavy tails (PFGM's Cauchy kernel) and singular centres (radial
profiles) are both covered. :class:`RadialLaw` holds the grid, the CDF (its last value is the
total mass, the flux) and the mean and spread of ``log p`` under the law.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from unified_ode.physics.noise import log_sphere_area

DTYPE = torch.float64
#: Kolmogorov–Smirnov critical constant: P(sqrt(n) D_n > 1.95) ≈ 0.001 under agreement.
KS_C = 1.95
#: Two-sided 0.1 % critical value of a standard normal statistic.
Z_C = 3.29


def gen(seed: int, salt: int) -> torch.Generator:
    """A CPU generator for one check: ``seed`` is the user's, ``salt`` tells checks apart."""
    return torch.Generator().manual_seed(int(seed) * 1009 + salt)


def full(n: int, t: float) -> Tensor:
    """``(n,)`` float64 tensor of the time ``t``."""
    return torch.full((n,), float(t), dtype=DTYPE)


def check_times(field, k: int = 5) -> list[float]:
    """``k`` times log-spaced from ``t_min`` to ``t_max`` (inclusive)."""
    lo, hi = math.log(field.t_min), math.log(field.t_max)
    return [math.exp(lo + (hi - lo) * i / (k - 1)) for i in range(k)]


def log_uniform_times(field, n: int, generator) -> Tensor:
    """``(n,)`` times log-uniform in ``[t_min, t_max]``."""
    u = torch.rand(n, generator=generator, dtype=DTYPE)
    lo, hi = math.log(field.t_min), math.log(field.t_max)
    return torch.exp(lo + u * (hi - lo))


def data_points(n: int, d: int, generator) -> Tensor:
    """``n`` source points "in the data range": ``N(0, I)`` (data of scale 1 per coordinate)."""
    return torch.randn(n, d, generator=generator, dtype=DTYPE)


def random_rotation(d: int, generator) -> Tensor:
    """A ``(d, d)`` orthogonal matrix drawn uniformly (QR of a Gaussian matrix)."""
    q, r = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=DTYPE))
    return q * torch.sign(torch.diagonal(r))[None, :]


def is_isotropic(log_prob, samples: Tensor, generator) -> bool:
    """Whether ``log_prob`` (a function of ``(n, d)`` points) is invariant under a random
    rotation about the origin at the given sample points (relative agreement 1e-8)."""
    d = samples.shape[1]
    rotated = -samples if d == 1 else samples @ random_rotation(d, generator).T
    a, b = log_prob(samples), log_prob(rotated)
    both_inf = torch.isinf(a) & torch.isinf(b) & (torch.sign(a) == torch.sign(b))
    close = (a - b).abs() <= 1e-8 * (1.0 + a.abs())
    return bool(torch.all(both_inf | close))


def kernel_at(field, y: Tensor, t: float):
    """``log p_t(x | y)`` for one source ``y`` ``(d,)`` as a function of ``x`` ``(n, d)``."""
    def log_prob(x):
        return field.kernel_log_prob(x, y.expand_as(x), full(x.shape[0], t))
    return log_prob


def kernel_sample(field, y: Tensor, t: float, n: int, generator) -> Tensor:
    """``n`` draws ``(n, d)`` of the field's kernel sampler at source ``y`` ``(d,)``, time ``t``."""
    return field.sample_kernel(y.expand(n, -1).clone(), full(n, t), generator=generator).to(DTYPE)


# --- radial quadrature -------------------------------------------------------------------

@dataclass
class RadialLaw:
    """The radius law of an isotropic density about 0, tabulated on a log grid.

    ``r`` ``(K,)`` radii; ``cdf`` ``(K,)`` the (unnormalised) CDF, ``cdf[-1]`` the total mass;
    ``log_p`` ``(K,)`` the density's log at ``(r, 0, …, 0)``; ``mean_log_p`` and
    ``std_log_p`` the mean and standard deviation of ``log p(X)`` for ``X`` of this law (nats).
    """

    r: Tensor
    cdf: Tensor
    log_p: Tensor
    mean_log_p: float
    std_log_p: float

    @property
    def mass(self) -> float:
        return float(self.cdf[-1])

    def cdf_at(self, radii: Tensor) -> Tensor:
        """The normalised CDF at ``radii`` (piecewise linear between grid points)."""
        return interp(radii, self.r, self.cdf / self.cdf[-1])


def radial_law(log_prob, d: int, *, r_lo: float = 1e-8, r_hi: float = 1e8,
               points: int = 20_001) -> RadialLaw:
    """Integrate an isotropic density ``log_prob`` (a function of ``(K, d)`` points, about 0) in
    ``R^d`` along the radius: trapezoid rule in ``log r`` from ``r_lo`` to ``r_hi``."""
    log_r = torch.linspace(math.log(r_lo), math.log(r_hi), points, dtype=DTYPE)
    x = torch.zeros(points, d, dtype=DTYPE)
    x[:, 0] = log_r.exp()
    log_p = log_prob(x).to(DTYPE)
    dens = torch.exp(log_p + log_sphere_area(d) + d * log_r)  # density of log r
    step = log_r[1] - log_r[0]
    cdf = torch.cat([torch.zeros(1, dtype=DTYPE),
                     torch.cumsum(0.5 * (dens[1:] + dens[:-1]) * step, 0)])
    # moments of log p: trapezoid weights, where the density is positive
    w = dens * step
    w[0], w[-1] = 0.5 * w[0], 0.5 * w[-1]
    pos = w > 0
    mass = w[pos].sum()
    mean = float((w[pos] * log_p[pos]).sum() / mass) if mass > 0 else math.nan
    var = float((w[pos] * (log_p[pos] - mean) ** 2).sum() / mass) if mass > 0 else math.nan
    return RadialLaw(log_r.exp(), cdf, log_p, mean, math.sqrt(max(var, 0.0)))


def radial_cdf(log_prob, d: int, **kwargs) -> tuple[Tensor, Tensor]:
    """``(r, F(r))`` of :func:`radial_law` (``F(r_hi)`` is the total mass)."""
    law = radial_law(log_prob, d, **kwargs)
    return law.r, law.cdf


def kernel_radius_cdf(field, t: float, d: int) -> tuple[Tensor, Tensor]:
    """``(r, F(r))``: the CDF of ``||x − y||`` under ``p_t(x | y = 0)`` in ``R^d``, integrated
    from the field's kernel log-density (isotropic kernels only)."""
    return radial_cdf(kernel_at(field, torch.zeros(d, dtype=DTYPE), t), d)


def kernel_radius_ks(field, t: float, d: int, n: int = 4000, seed: int = 0) -> dict:
    """The validator's radius test on one kernel: KS statistic between ``n`` radii drawn by the
    kernel sampler at ``y = 0``, time ``t`` and the CDF integrated from the log-density.

    Returns ``{"ks": D_n, "flux": total mass of the density, "n": n}``. Under agreement
    ``D_n`` is below ``1.95/sqrt(n)`` with probability 0.999."""
    y = torch.zeros(d, dtype=DTYPE)
    law = radial_law(kernel_at(field, y, t), d)
    x = kernel_sample(field, y, t, n, torch.Generator().manual_seed(seed))
    return {"ks": ks_statistic(x.norm(dim=1), law), "flux": law.mass, "n": n}


def interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation of ``fp`` at ``x`` (``xp`` increasing; clamped at ends)."""
    i = torch.searchsorted(xp, x.contiguous()).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    w = ((x - x0) / (x1 - x0)).clamp(0, 1)
    return f0 + w * (f1 - f0)


def ks_statistic(values: Tensor, law: RadialLaw) -> float:
    """KS statistic of a sample of radii ``(n,)`` against a radial law (its CDF normalised by
    the total mass: the shape is compared, the mass is the flux check's business)."""
    v = torch.sort(values.to(DTYPE)).values
    model = law.cdf_at(v)
    n = v.numel()
    hi = torch.arange(1, n + 1, dtype=DTYPE) / n
    lo = torch.arange(0, n, dtype=DTYPE) / n
    return float(torch.maximum((hi - model).abs(), (model - lo).abs()).max())


def weighted_ks(sample: Tensor, proposal: Tensor, log_w: Tensor) -> tuple[float, float]:
    """Two-sample KS between a plain sample and an importance-weighted one; returns the
    statistic and the weighted sample's effective size."""
    w = torch.softmax(log_w, 0)
    ess = float(1.0 / (w * w).sum())
    values = torch.cat([sample, proposal])
    order = torch.argsort(values)
    mass = torch.cat([torch.full_like(sample, 1.0 / sample.numel()), -w])[order]
    return float(torch.cumsum(mass, 0).abs().max()), ess


# --- importance sampling -----------------------------------------------------------------

class MixtureProposal:
    """Defensive importance-sampling proposal in ``R^d``, an equal mixture of

    * ``N(c, (1.25 s)²)`` (per-coordinate scale ``s``),
    * a multivariate Cauchy with centre ``c`` and per-coordinate scale ``s``, whose tails
      ``~ r^{−(d+1)}`` keep the weights ``p/q`` bounded for any kernel whose tails are no
      heavier than PFGM's,
    * the uniform law on a box (the sample's range, widened by 5% each side), which makes
      bounded kernels (a uniform cube) cheap to integrate.

    Fitted to a sample of the kernel (never the sampler itself): ``c`` is the coordinate-wise
    median, ``s = IQR/1.349`` (the standard deviation for a Gaussian)."""

    def __init__(self, center: Tensor, scale: Tensor, lo: Tensor, hi: Tensor):
        self.c = center.to(DTYPE)
        s = scale.to(DTYPE)
        self.s = s.clamp_min(1e-12 * float(s.max()) + 1e-300)
        self.d = self.c.numel()
        width = (hi - lo).to(DTYPE).clamp_min(1e-300)
        self.lo, self.hi = lo.to(DTYPE) - 0.05 * width, hi.to(DTYPE) + 0.05 * width

    @classmethod
    def fit(cls, sample: Tensor) -> MixtureProposal:
        q = torch.quantile(sample, torch.tensor([0.25, 0.5, 0.75], dtype=DTYPE), dim=0)
        return cls(q[1], (q[2] - q[0]) / 1.349, sample.min(0).values, sample.max(0).values)

    def sample(self, n: int, generator) -> Tensor:
        d = self.d
        g = torch.randn(n, d, generator=generator, dtype=DTYPE)
        h = torch.randn(n, 1, generator=generator, dtype=DTYPE).abs().clamp_min(1e-300)
        u = torch.rand(n, d, generator=generator, dtype=DTYPE)
        pick = torch.randint(0, 3, (n, 1), generator=generator)
        z = torch.where(pick == 0, 1.25 * g, g / h)
        box = self.lo + (self.hi - self.lo) * u
        return torch.where(pick == 2, box, self.c + self.s * z)

    def log_prob(self, x: Tensor) -> Tensor:
        d = self.d
        z = (x - self.c) / self.s
        sq = (z * z).sum(1)
        log_det = torch.log(self.s).sum()
        gauss = (-0.5 * d * math.log(2 * math.pi) - d * math.log(1.25) - 0.5 * sq / 1.25**2
                 - log_det)
        cauchy = (math.lgamma((d + 1) / 2) - math.lgamma(0.5) - 0.5 * d * math.log(math.pi)
                  - 0.5 * (d + 1) * torch.log1p(sq) - log_det)
        inside = ((x >= self.lo) & (x <= self.hi)).all(1)
        box = torch.where(inside, -torch.log(self.hi - self.lo).sum(),
                          torch.full_like(sq, -math.inf))
        return torch.logsumexp(torch.stack([gauss, cauchy, box]), 0) - math.log(3.0)


def importance(log_prob, sample: Tensor, n: int, generator) -> tuple[Tensor, Tensor]:
    """Importance sample ``(x (n, d), log_w (n,))`` of a density, the proposal fitted to
    ``sample``."""
    proposal = MixtureProposal.fit(sample)
    x = proposal.sample(n, generator)
    log_w = log_prob(x) - proposal.log_prob(x)
    return x, torch.nan_to_num(log_w, nan=-torch.inf)


def mc_mass(log_w: Tensor, mask: Tensor | None = None) -> tuple[float, float]:
    """Importance-sampling estimate of a mass ``E_q[w·1_mask]`` and its standard error."""
    w = log_w.exp()
    if mask is not None:
        w = w * mask
    return float(w.mean()), float(w.std() / math.sqrt(w.numel()))


# --- centre of a radial density ----------------------------------------------------------

def radial_centre(log_prob, points: Tensor) -> Tensor | None:
    """The centre ``m`` of a density that is radial about some point, from its gradients at
    ``points`` ``(n, d)``: the least-squares point on every line ``x_i + s ∇log p(x_i)``.
    ``None`` when that is ill-posed (``d = 1``, vanishing or parallel gradients)."""
    n, d = points.shape
    if d < 2:
        return None
    grad = grad_x(log_prob, points)
    norm = grad.norm(dim=1, keepdim=True)
    ok = torch.isfinite(grad).all(1) & (norm[:, 0] > 0)
    if int(ok.sum()) < 2 * d:
        return None
    u = grad[ok] / norm[ok]
    proj = torch.eye(d, dtype=DTYPE)[None] - u[:, :, None] * u[:, None, :]
    a = proj.sum(0)
    b = (proj @ points[ok][:, :, None]).sum(0)[:, 0]
    evals = torch.linalg.eigvalsh(a)
    if not float(evals[0]) > 1e-6 * float(evals[-1]):
        return None
    return torch.linalg.solve(a, b)


def grad_x(log_prob, x: Tensor) -> Tensor:
    """``∇_x log p`` at ``x`` ``(n, d)``: autograd, or central differences with steps of 1e-6
    of the distance to the points' median."""
    with torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        out = log_prob(xg)
        if out.requires_grad:
            grad = torch.autograd.grad(out.sum(), xg, allow_unused=True)[0]
            if grad is not None:
                return grad.detach()
    h = 1e-6 * (x - x.median(0).values).norm(dim=1).clamp_min(1e-300)
    cols = []
    for i in range(x.shape[1]):
        e = torch.zeros_like(x)
        e[:, i] = h
        cols.append((log_prob(x + e) - log_prob(x - e)) / (2 * h))
    return torch.stack(cols, 1)
