"""Numerical proof that a force field is a valid Green's field (THEORY.md §2).

A field is valid when its Green's field ``G = (G_t, G_x) = (p_t(x|y), p_t(x|y)·v(x,t|y))`` is

1. **divergence-free**: ``∂_t G_t + ∇_x·G_x = 0`` for all ``t > 0``;
2. of **unit flux**: ``∫ p_t(x|y) dx = 1`` for all ``t``;
3. a **point source**: ``p_t(·|y) → δ(· − y)`` as ``t → 0``;
4. **forgetful**: ``p_{t_max}(·|y) ≈ π`` (the prior) for every ``y`` in the data's range;

and, for the field to be usable, its **samplers agree with its log-densities**. One function
per check below takes any :class:`~unified_ode.physics.base.Field` and a data dimension ``d``
(states ``(B, d)``) and returns a :class:`CheckResult` (residual, tolerance, pass/fail, and a
line of detail). :func:`validate_field` runs them all; :func:`format_table` prints them.

Everything runs in float64 with seeded generators, so a verdict is deterministic. Only the
field's public methods are used (``sample_kernel``, ``kernel_log_prob``,
``conditional_velocity``, ``sample_prior``, ``prior_log_prob``, ``t_min``, ``t_max``): a
user's field class needs nothing else to be validated.

How each check is computed (and why it can fail):

* divergence: dividing by ``p > 0``, ``div G / p = ∂_t log p + Σ_i (∂_i v_i + v_i ∂_i log p)``,
  with every partial derivative by autograd (central differences when the field's methods
  are not differentiable). The residual is the largest relative value
  ``|∂_t log p + Σ_i b_i| / (|∂_t log p| + Σ_i |b_i|)`` over random ``(x, t, y)``, which is
  exactly ``|∂_t G_t + ∇·G_x| / (|∂_t G_t| + Σ_i |∂_i G_x,i|)``. Round-off gives ~1e-13; a
  wrong velocity or kernel gives O(0.1).
* unit flux: isotropic kernels (detected numerically by rotating points) are integrated along
  the radius on a log grid (:func:`~unified_ode.physics.checks.radius_cdf`); other kernels by
  importance sampling from a defensive mixture of a Gaussian and a multivariate Cauchy fitted
  to the kernel's spread (never the kernel's own sampler).
* point source: the kernel mass within ``δ = point_radius·sqrt(d)`` of ``y`` at
  ``t = t_min / 100`` (same integrators) must be 1.
* forgets the source: the total-variation distance between ``p_{t_max}(·|y)`` and ``π`` for
  ``y = ±(1, …, 1)`` (data scale 1 per coordinate), estimated by Monte Carlo from samples of
  both laws (``TV = E_p[(1 − π/p)_+] = E_π[(1 − p/π)_+]``).
* samplers: for isotropic laws a Kolmogorov–Smirnov test of sampled radii against the radius
  CDF integrated from the log-density (kernel at three times, and prior); for every kernel a
  projected KS test at ``y ≠ 0`` (which also sees the kernel's centre ``a(t)·y``) against the
  importance-weighted CDF of the log-density.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from unified_ode.physics.checks import log_sphere_area

DTYPE = torch.float64

#: Default tolerances. Each is stated in the table the validator prints.
TOLERANCES = {
    # max relative divergence |div G| / (|d_t G_t| + sum_i |d_i G_x,i|), derivatives by
    # autograd (round-off ~1e-13) or, for fields that are not differentiable, by central
    # differences (truncation and round-off ~1e-7)
    "divergence": 1e-6,
    "divergence_fd": 1e-4,
    # |flux - 1| by radial quadrature (accurate to ~1e-6 for the heavy-tailed Cauchy kernel)
    "flux_quadrature": 1e-3,
    # |flux - 1| by importance sampling (standard error 2e-3 to 4e-3 for a uniform-cube kernel
    # in d = 2 to 8 at the default sample size)
    "flux_mc": 0.02,
    # |mass within delta of y at t_min/100 - 1| by radial quadrature (by importance sampling
    # the flux_mc tolerance applies)
    "point_source": 0.01,
    # total variation between the kernel at t_max and the prior, for sources y = ±(1, ..., 1)
    # (MC standard error < 0.004). A field forgets y when t_max dwarfs ||y||: VE at t_max = 80
    # gives 0.007-0.014 in d = 2-8, the radial profiles at t_max = 100 up to 0.12 in d = 8.
    "forgets": 0.15,
}
#: Kolmogorov–Smirnov critical constant: P(sqrt(n) D_n > 1.95) ≈ 0.001 under agreement.
KS_C = 1.95


@dataclass
class CheckResult:
    """Outcome of one check: ``passed`` is ``residual <= tolerance`` (and finite)."""

    name: str
    residual: float
    tolerance: float
    passed: bool
    detail: str = ""

    @classmethod
    def of(cls, name: str, residual: float, tolerance: float, detail: str = ""):
        residual = float(residual)
        ok = math.isfinite(residual) and residual <= tolerance
        return cls(name, residual, float(tolerance), bool(ok), detail)


# --- helpers -----------------------------------------------------------------------------

def _gen(seed: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1009 + salt)


def _full(n: int, t: float) -> Tensor:
    return torch.full((n,), float(t), dtype=DTYPE)


def check_times(field, k: int = 5) -> list[float]:
    """``k`` times log-spaced from ``t_min`` to ``t_max`` (inclusive)."""
    lo, hi = math.log(field.t_min), math.log(field.t_max)
    return [math.exp(lo + (hi - lo) * i / (k - 1)) for i in range(k)]


def data_points(n: int, d: int, generator) -> Tensor:
    """``n`` source points "in the data range": ``N(0, I)`` (data of scale 1 per coordinate)."""
    return torch.randn(n, d, generator=generator, dtype=DTYPE)


def random_rotation(d: int, generator) -> Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=DTYPE))
    return q * torch.sign(torch.diagonal(r))[None, :]


def is_isotropic(log_prob, samples: Tensor, generator) -> bool:
    """Whether ``log_prob`` (a function of ``(n, d)`` points) is invariant under a random
    rotation about the origin at the given sample points (relative agreement 1e-8)."""
    d = samples.shape[1]
    if d == 1:
        rotated = -samples
    else:
        rotated = samples @ random_rotation(d, generator).T
    a, b = log_prob(samples), log_prob(rotated)
    both_inf = torch.isinf(a) & torch.isinf(b) & (torch.sign(a) == torch.sign(b))
    close = (a - b).abs() <= 1e-8 * (1.0 + a.abs())
    return bool(torch.all(both_inf | close))


def radial_cdf(log_prob, d: int, *, r_lo: float = 1e-8, r_hi: float = 1e8,
               points: int = 20_001) -> tuple[Tensor, Tensor]:
    """``(r, F(r))``: CDF of ``||x||`` for an isotropic density ``log_prob`` about 0 in ``R^d``
    (trapezoid rule in ``log r``; ``F(r_hi)`` is the total mass)."""
    log_r = torch.linspace(math.log(r_lo), math.log(r_hi), points, dtype=DTYPE)
    x = torch.zeros(points, d, dtype=DTYPE)
    x[:, 0] = log_r.exp()
    dens = torch.exp(log_prob(x) + log_sphere_area(d) + d * log_r)
    step = log_r[1] - log_r[0]
    cdf = torch.cat([torch.zeros(1, dtype=DTYPE),
                     torch.cumsum(0.5 * (dens[1:] + dens[:-1]) * step, 0)])
    return log_r.exp(), cdf


def _ks_against_cdf(values: Tensor, r: Tensor, cdf: Tensor) -> float:
    """KS statistic of a sample against a tabulated CDF (normalised by its last value, so
    the shape is compared; the mass is the flux check's business)."""
    v = torch.sort(values).values.numpy()
    model = np.interp(v, r.numpy(), (cdf / cdf[-1]).numpy())
    n = len(v)
    hi = np.arange(1, n + 1) / n
    lo = np.arange(0, n) / n
    return float(np.max(np.maximum(np.abs(hi - model), np.abs(model - lo))))


def _weighted_ks(sample: Tensor, proposal: Tensor, log_w: Tensor) -> tuple[float, float]:
    """Two-sample KS between a plain sample and an importance-weighted one; returns the
    statistic and the weighted sample's effective size."""
    w = torch.softmax(log_w, 0)
    ess = float(1.0 / (w * w).sum())
    values = torch.cat([sample, proposal])
    order = torch.argsort(values)
    mass = torch.cat([torch.full_like(sample, 1.0 / sample.numel()), -w])[order]
    return float(torch.cumsum(mass, 0).abs().max()), ess


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


def _kernel_at(field, y: Tensor, t: float):
    """``log p_t(x | y)`` for one source ``y`` ``(d,)`` as a function of ``x`` ``(n, d)``."""
    def log_prob(x):
        return field.kernel_log_prob(x, y.expand_as(x), _full(x.shape[0], t))
    return log_prob


def _kernel_sample(field, y: Tensor, t: float, n: int, generator) -> Tensor:
    return field.sample_kernel(y.expand(n, -1).clone(), _full(n, t), generator=generator)


def _importance(log_prob, sample: Tensor, n: int, generator):
    """Importance sample ``(x, log_w)`` of a density, with the proposal fitted to ``sample``."""
    proposal = MixtureProposal.fit(sample)
    x = proposal.sample(n, generator)
    log_w = log_prob(x) - proposal.log_prob(x)
    log_w = torch.nan_to_num(log_w, nan=-torch.inf)
    return x, log_w


def _mc_mass(log_w: Tensor, mask: Tensor | None = None) -> tuple[float, float]:
    """Importance-sampling estimate of a mass ``E_q[w·1_mask]`` and its standard error."""
    w = log_w.exp()
    if mask is not None:
        w = w * mask
    return float(w.mean()), float(w.std() / math.sqrt(w.numel()))


# --- the checks --------------------------------------------------------------------------

def check_divergence_free(field, d: int, *, n: int = 256, seed: int = 0,
                          tol: float = TOLERANCES["divergence"],
                          tol_fd: float = TOLERANCES["divergence_fd"]) -> CheckResult:
    """Condition 1: ``∂_t G_t + ∇_x·G_x = 0`` at ``n`` random ``(x, t, y)``: ``y ~ N(0, I)``,
    ``t`` log-uniform in ``[t_min, t_max]``, ``x ~ p_t(·|y)``."""
    name = "divergence-free"
    g = _gen(seed, 1)
    y = data_points(n, d, g)
    u = torch.rand(n, generator=g, dtype=DTYPE)
    t = torch.exp(math.log(field.t_min) + u * (math.log(field.t_max) - math.log(field.t_min)))
    with torch.no_grad():
        x = field.sample_kernel(y, t, generator=g).to(DTYPE)
    method, terms = _divergence_terms(field, x, y, t)
    dt_logp, b = terms
    num = (dt_logp + b.sum(1)).abs()
    den = dt_logp.abs() + b.abs().sum(1)
    ok = torch.isfinite(num) & torch.isfinite(den)
    if not torch.any(ok):
        return CheckResult.of(name, math.nan, tol, "log-density or velocity not finite at "
                              "kernel samples")
    rel = num[ok] / den[ok].clamp_min(1e-300)
    worst = int(torch.argmax(rel))
    tw = float(t[ok][worst])
    tol = tol if method == "autograd" else tol_fd
    return CheckResult.of(name, float(rel.max()), tol,
                          f"max |div G|/scale over {int(ok.sum())} points ({method}); "
                          f"worst at t={tw:.3g}")


def _divergence_terms(field, x: Tensor, y: Tensor, t: Tensor):
    """``(method, (∂_t log p, b))`` with ``b_i = ∂_i v_i + v_i ∂_i log p`` ``(n, d)``."""
    d = x.shape[1]
    xg = x.clone().requires_grad_(True)
    tg = t.clone().requires_grad_(True)
    with torch.enable_grad():
        logp = field.kernel_log_prob(xg, y, tg)
        v = field.conditional_velocity(xg, y, tg)
        if logp.requires_grad and v.requires_grad:
            dt_logp, dx_logp = torch.autograd.grad(logp.sum(), (tg, xg), retain_graph=True,
                                                   allow_unused=True)
            if dt_logp is not None and dx_logp is not None:
                div_cols = []
                for i in range(d):
                    gi = torch.autograd.grad(v[:, i].sum(), xg, retain_graph=True,
                                             allow_unused=True)[0]
                    div_cols.append(torch.zeros(x.shape[0], dtype=DTYPE) if gi is None
                                    else gi[:, i])
                dv = torch.stack(div_cols, 1)
                b = dv + v.detach() * dx_logp
                return "autograd", (dt_logp.detach(), b.detach())
    return "central differences", _divergence_terms_fd(field, x, y, t)


@torch.no_grad()
def _divergence_terms_fd(field, x, y, t):
    """Central differences, with steps 1e-5 of the local length scale ``min(||x − y||, t)``
    (kernels may be singular at the source, as radial profiles are)."""
    d = x.shape[1]
    h_t = 1e-5 * t
    dt_logp = (field.kernel_log_prob(x, y, t + h_t) - field.kernel_log_prob(x, y, t - h_t)) / (
        2 * h_t)
    v = field.conditional_velocity(x, y, t)
    b = torch.empty_like(x)
    local = torch.minimum((x - y).norm(dim=1), t)
    h = 1e-5 * torch.maximum(local, 1e-3 * t)
    for i in range(d):
        e = torch.zeros_like(x)
        e[:, i] = h
        lp_p, lp_m = field.kernel_log_prob(x + e, y, t), field.kernel_log_prob(x - e, y, t)
        v_p = field.conditional_velocity(x + e, y, t)[:, i]
        v_m = field.conditional_velocity(x - e, y, t)[:, i]
        b[:, i] = (v_p - v_m) / (2 * h) + v[:, i] * (lp_p - lp_m) / (2 * h)
    return dt_logp, b


def check_unit_flux(field, d: int, *, seed: int = 0, n_mc: int = 400_000,
                    tol_quadrature: float = TOLERANCES["flux_quadrature"],
                    tol_mc: float = TOLERANCES["flux_mc"]) -> CheckResult:
    """Condition 2: ``∫ p_t(x|y) dx = 1`` at five times from ``t_min`` to ``t_max``
    (``y = 0``; radial quadrature for isotropic kernels, importance sampling otherwise)."""
    name = "unit flux"
    g = _gen(seed, 2)
    y = torch.zeros(d, dtype=DTYPE)
    worst, worst_t, worst_tol = -1.0, None, 1.0
    ses = []
    for t in check_times(field):
        log_prob = _kernel_at(field, y, t)
        sample = _kernel_sample(field, y, t, 4000, g)
        if is_isotropic(log_prob, sample, g):
            method, tol = "radial quadrature", tol_quadrature
            flux = float(radial_cdf(log_prob, d)[1][-1])
        else:
            method, tol = "importance sampling", tol_mc
            _, log_w = _importance(log_prob, sample, n_mc, g)
            flux, se = _mc_mass(log_w)
            ses.append(se)
        err = abs(flux - 1.0)
        if not math.isfinite(err):
            err = math.inf
        if worst_t is None or err / tol > worst / worst_tol:
            worst, worst_t, worst_flux, worst_tol, worst_method = err, t, flux, tol, method
    extra = f", MC s.e. <= {max(ses):.1e}" if ses else ""
    return CheckResult.of(name, worst, worst_tol, f"{worst_method}; worst flux "
                          f"{worst_flux:.6g} at t={worst_t:.3g}{extra}")


def check_point_source(field, d: int, *, seed: int = 0, point_radius: float = 0.05,
                       shrink: float = 100.0, n_mc: int = 400_000,
                       tol: float = TOLERANCES["point_source"],
                       tol_mc: float = TOLERANCES["flux_mc"]) -> CheckResult:
    """Condition 3: as ``t → 0`` the kernel mass concentrates at ``y``. Residual:
    ``|1 − ∫_{||x−y||<δ} p_t(x|y) dx|`` at ``t = t_min/shrink``, ``δ = point_radius·sqrt(d)``
    (``y = 0``)."""
    name = "point source"
    g = _gen(seed, 3)
    t = field.t_min / shrink
    delta = point_radius * math.sqrt(d)
    y = torch.zeros(d, dtype=DTYPE)
    log_prob = _kernel_at(field, y, t)
    sample = _kernel_sample(field, y, t, 4000, g)
    if is_isotropic(log_prob, sample, g):
        r, cdf = radial_cdf(log_prob, d)
        mass, method = float(np.interp(delta, r.numpy(), cdf.numpy())), "radial quadrature"
    else:
        x, log_w = _importance(log_prob, sample, n_mc, g)
        mass, se = _mc_mass(log_w, (x.norm(dim=1) < delta).to(DTYPE))
        method, tol = f"importance sampling, s.e. {se:.1e}", tol_mc
    return CheckResult.of(name, abs(1.0 - mass), tol,
                          f"mass within {delta:.3g} of y at t={t:.3g}: {mass:.6g} ({method})")


def check_forgets_source(field, d: int, *, seed: int = 0, n: int = 20_000,
                         tol: float = TOLERANCES["forgets"]) -> CheckResult:
    """Condition 4: ``p_{t_max}(·|y) ≈ π`` for ``y = ±(1, …, 1)``: Monte-Carlo total variation
    ``E_p[(1 − π/p)_+]`` (kernel samples) and ``E_π[(1 − p/π)_+]`` (prior samples); residual
    is the largest of the four estimates (standard error < 0.5/sqrt(n))."""
    name = "forgets source at t_max"
    g = _gen(seed, 4)
    t = field.t_max
    worst, parts = 0.0, []
    with torch.no_grad():
        prior = field.sample_prior(n, (d,), generator=g, dtype=DTYPE).to(DTYPE)
        lq_prior = field.prior_log_prob(prior)
        for sign in (1.0, -1.0):
            y = torch.full((d,), sign, dtype=DTYPE)
            xk = _kernel_sample(field, y, t, n, g)
            lp = field.kernel_log_prob(xk, y.expand_as(xk), _full(n, t))
            lq = field.prior_log_prob(xk)
            tv_k = float((1 - torch.exp(lq - lp)).clamp_min(0).nan_to_num(1.0).mean())
            lp_prior = field.kernel_log_prob(prior, y.expand_as(prior), _full(n, t))
            tv_p = float((1 - torch.exp(lp_prior - lq_prior)).clamp_min(0).nan_to_num(1.0)
                         .mean())
            parts.append(f"y={'+' if sign > 0 else '-'}1: {tv_k:.3g}/{tv_p:.3g}")
            worst = max(worst, tv_k, tv_p)
    return CheckResult.of(name, worst, tol,
                          "TV(kernel, prior) from kernel/prior samples, " + ", ".join(parts))


def check_samplers(field, d: int, *, seed: int = 0, n: int = 8000,
                   n_is: int = 100_000) -> CheckResult:
    """The samplers agree with the log-densities. Residual: the largest test statistic divided
    by its 0.1% critical value, so the tolerance is 1.

    * Kernel at ``y = 0`` and ``y = (0.5, −0.5, …)``, three times each. When the log-density
      is isotropic about a centre ``m`` (found from the log-density alone: the point its
      gradients all point at), sampled radii ``||x − m||`` are KS-tested against the radius
      CDF integrated from the log-density (critical value ``1.95/sqrt(n)``), and a sign test
      checks that the samples are centred on ``m`` (``P(u·(x − m) > 0) = 1/2`` for two
      directions ``u``; critical value ``3.29·0.5/sqrt(n)``). Otherwise sample projections on
      two directions are KS-tested against the importance-weighted log-density (critical
      value ``1.95·sqrt(1/n + 1/n_eff)``).
    * Prior: radius KS test when isotropic about 0.
    """
    name = "samplers match log-densities"
    g = _gen(seed, 5)
    worst, where = 0.0, ""
    counts = {"radius": 0, "sign": 0, "projection": 0}
    min_ess = math.inf
    crit = KS_C * math.sqrt(1.0 / n)
    directions = [torch.eye(d, dtype=DTYPE)[0], torch.ones(d, dtype=DTYPE) / math.sqrt(d)]

    def record(ratio, label, kind):
        nonlocal worst, where
        counts[kind] += 1
        if not math.isfinite(ratio):
            ratio = math.inf
        if ratio > worst:
            worst, where = ratio, label

    sources = {"y=0": torch.zeros(d, dtype=DTYPE),
               "y!=0": torch.tensor([0.5 * (-1) ** i for i in range(d)], dtype=DTYPE)}
    with torch.no_grad():
        for label, y in sources.items():
            for t in check_times(field, 3):
                log_prob = _kernel_at(field, y, t)
                sample = _kernel_sample(field, y, t, n, g)
                where_t = f"kernel {label}, t={t:.3g}"
                m = radial_centre(log_prob, sample[:256])
                centred = None if m is None else (lambda z, m=m, lp=log_prob: lp(m + z))
                if centred is not None and is_isotropic(centred, sample - m, g):
                    r, cdf = radial_cdf(centred, d)
                    record(_ks_against_cdf((sample - m).norm(dim=1), r, cdf) / crit,
                           f"radius, {where_t}", "radius")
                    for u in directions:
                        frac = float(((sample - m) @ u > 0).to(DTYPE).mean())
                        record(abs(frac - 0.5) / (3.29 * 0.5 / math.sqrt(n)),
                               f"centre, {where_t}", "sign")
                else:
                    x, log_w = _importance(log_prob, sample, n_is, g)
                    for u in directions:
                        stat, ess = _weighted_ks(sample @ u, x @ u, log_w)
                        min_ess = min(min_ess, ess)
                        record(stat / (KS_C * math.sqrt(1.0 / n + 1.0 / max(ess, 1.0))),
                               f"projection, {where_t}", "projection")
        prior = field.sample_prior(n, (d,), generator=g, dtype=DTYPE).to(DTYPE)
        prior_iso = is_isotropic(field.prior_log_prob, prior, g)
        if prior_iso:
            r, cdf = radial_cdf(field.prior_log_prob, d)
            record(_ks_against_cdf(prior.norm(dim=1), r, cdf) / crit, "prior radius", "radius")
    parts = [f"{k} tests: {v}" for k, v in counts.items() if v]
    if math.isfinite(min_ess):
        parts.append(f"min n_eff {min_ess:.0f}")
    if not prior_iso:
        parts.append("prior not isotropic: only its density is used (forgets check)")
    return CheckResult.of(name, worst, 1.0, f"max statistic/critical ({', '.join(parts)}); "
                          f"worst: {where}")


def radial_centre(log_prob, points: Tensor) -> Tensor | None:
    """The centre ``m`` of a density that is radial about some point, from its gradients at
    ``points`` ``(n, d)``: the least-squares point on every line ``x_i + s ∇log p(x_i)``.
    ``None`` when that is ill-posed (``d = 1``, vanishing or parallel gradients)."""
    n, d = points.shape
    if d < 2:
        return None
    grad = _grad_x(log_prob, points)
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


def _grad_x(log_prob, x: Tensor) -> Tensor:
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


CHECKS = (check_divergence_free, check_unit_flux, check_point_source, check_forgets_source,
          check_samplers)


#: Which keyword(s) of which check(s) each entry of :data:`TOLERANCES` sets.
_TOLERANCE_ARGS = {
    "divergence": [(check_divergence_free, "tol")],
    "divergence_fd": [(check_divergence_free, "tol_fd")],
    "flux_quadrature": [(check_unit_flux, "tol_quadrature")],
    "flux_mc": [(check_unit_flux, "tol_mc"), (check_point_source, "tol_mc")],
    "point_source": [(check_point_source, "tol")],
    "forgets": [(check_forgets_source, "tol")],
}


def validate_field(field, d: int, *, seed: int = 0,
                   tolerances: dict | None = None) -> list[CheckResult]:
    """Run every check on ``field`` in dimension ``d``; ``tolerances`` overrides entries of
    :data:`TOLERANCES`. A check that raises fails with the exception as its detail (the
    others still run)."""
    tolerances = dict(tolerances or {})
    unknown = sorted(set(tolerances) - set(_TOLERANCE_ARGS))
    if unknown:
        raise ValueError(f"unknown tolerance(s) {unknown}; known: {sorted(_TOLERANCE_ARGS)}")
    results = []
    for check in CHECKS:
        kwargs = {arg: float(tolerances[key]) for key, targets in _TOLERANCE_ARGS.items()
                  for fn, arg in targets if fn is check and key in tolerances}
        try:
            results.append(check(field, d, seed=seed, **kwargs))
        except Exception as exc:  # noqa: BLE001 - a crashing field fails the check, visibly
            label = check.__name__.removeprefix("check_").replace("_", " ")
            results.append(CheckResult(label, math.nan, math.nan, False,
                                       f"raised {type(exc).__name__}: {exc}"))
    return results


def format_table(results: list[CheckResult]) -> str:
    """A plain-text table: check, residual, tolerance, PASS/FAIL, detail."""
    rows = [("check", "residual", "tolerance", "result", "detail")]
    for r in results:
        rows.append((r.name, f"{r.residual:.3e}", f"{r.tolerance:.1e}",
                     "PASS" if r.passed else "FAIL", r.detail))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for k, row in enumerate(rows):
        cells = [row[i].ljust(widths[i]) for i in range(4)] + [row[4]]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
    return "\n".join(lines)


__all__ = ["CHECKS", "TOLERANCES", "CheckResult", "MixtureProposal", "check_divergence_free",
           "check_forgets_source", "check_point_source", "check_samplers", "check_unit_flux",
           "format_table", "radial_cdf", "validate_field"]
