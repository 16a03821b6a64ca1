"""The Green's-field conditions (THEORY.md §2), one check each.

A field is valid when its Green's field ``G = (G_t, G_x) = (p_t(x|y), p_t(x|y)·v(x,t|y))`` is

1. **divergence-free**: ``∂_t G_t + ∇_x·G_x = 0`` for all ``t > 0``;
2. of **unit flux**: ``∫ p_t(x|y) dx = 1`` for all ``t``;
3. a **point source**: ``p_t(·|y) → δ(· − y)`` as ``t → 0``;
4. **forgetful**: ``p_{t_max}(·|y) ≈ π`` (the prior) for every ``y`` in the data's range, and
   exactly so (to a tight tolerance) for the data's centre ``y = 0``.

Each check takes a field and a data dimension ``d`` (states ``(B, d)``, float64) and returns a
:class:`~unified_ode.physics.validator.base.CheckResult`.

* divergence: dividing by ``p > 0``, ``div G / p = ∂_t log p + Σ_i (∂_i v_i + v_i ∂_i log p)``,
  with every partial derivative by autograd (central differences when the field's methods
  are not differentiable). The residual is the largest relative value
  ``|∂_t log p + Σ_i b_i| / (|∂_t log p| + Σ_i |b_i|)`` over random ``(x, t, y)``, which is
  exactly ``|∂_t G_t + ∇·G_x| / (|∂_t G_t| + Σ_i |∂_i G_x,i|)``. Round-off gives ~1e-13; a
  wrong velocity or kernel gives O(0.1).
* unit flux: isotropic kernels (detected numerically by rotating points) are integrated along
  the radius on a log grid (:func:`~unified_ode.physics.validator.numerics.radial_law`); other
  kernels by importance sampling from a defensive mixture of a Gaussian, a multivariate Cauchy
  and a box fitted to the kernel's spread (never the kernel's own sampler).
* point source: the kernel mass within ``δ = point_radius·sqrt(d)`` of ``y`` at
  ``t = t_min / 100`` (same integrators) must be 1.
* prior and forgetting: Monte-Carlo total-variation distances between ``p_{t_max}(·|y)`` and
  ``π`` from samples of both laws (``TV = E_p[(1 − π/p)_+] = E_π[(1 − p/π)_+]``): for ``y = 0``
  with a tolerance of 0.005 (a prior whose scale is 3 % off gives 0.022 in ``d = 2``), for
  ``y = ±(1, …, 1)`` (data scale 1 per coordinate) with 0.15 (a kernel at ``t_max`` still
  remembers a source of norm ``sqrt(d)`` a little).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from unified_ode.physics.validator.base import TOLERANCES, CheckResult
from unified_ode.physics.validator.numerics import (
    DTYPE,
    check_times,
    data_points,
    full,
    gen,
    importance,
    interp,
    is_isotropic,
    kernel_at,
    kernel_sample,
    log_uniform_times,
    mc_mass,
    radial_law,
)


def check_divergence_free(field, d: int, *, n: int = 256, seed: int = 0,
                          tol: float = TOLERANCES["divergence"],
                          tol_fd: float = TOLERANCES["divergence_fd"]) -> CheckResult:
    """Condition 1: ``∂_t G_t + ∇_x·G_x = 0`` at ``n`` random ``(x, t, y)``: ``y ~ N(0, I)``,
    ``t`` log-uniform in ``[t_min, t_max]``, ``x ~ p_t(·|y)``."""
    name = "divergence-free"
    g = gen(seed, 1)
    y = data_points(n, d, g)
    t = log_uniform_times(field, n, g)
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
    g = gen(seed, 2)
    y = torch.zeros(d, dtype=DTYPE)
    worst, worst_t, worst_tol = -1.0, None, 1.0
    ses = []
    for t in check_times(field):
        log_prob = kernel_at(field, y, t)
        sample = kernel_sample(field, y, t, 4000, g)
        if is_isotropic(log_prob, sample, g):
            method, tol = "radial quadrature", tol_quadrature
            flux = radial_law(log_prob, d).mass
        else:
            method, tol = "importance sampling", tol_mc
            _, log_w = importance(log_prob, sample, n_mc, g)
            flux, se = mc_mass(log_w)
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
    g = gen(seed, 3)
    t = field.t_min / shrink
    delta = point_radius * math.sqrt(d)
    y = torch.zeros(d, dtype=DTYPE)
    log_prob = kernel_at(field, y, t)
    sample = kernel_sample(field, y, t, 4000, g)
    if is_isotropic(log_prob, sample, g):
        law = radial_law(log_prob, d)
        mass = float(interp(torch.tensor([delta], dtype=DTYPE), law.r, law.cdf)[0])
        method = "radial quadrature"
    else:
        x, log_w = importance(log_prob, sample, n_mc, g)
        mass, se = mc_mass(log_w, (x.norm(dim=1) < delta).to(DTYPE))
        method, tol = f"importance sampling, s.e. {se:.1e}", tol_mc
    return CheckResult.of(name, abs(1.0 - mass), tol,
                          f"mass within {delta:.3g} of y at t={t:.3g}: {mass:.6g} ({method})")


def _tv_to_prior(field, y: Tensor, prior: Tensor, lq_prior: Tensor, n: int, generator):
    """Monte-Carlo ``TV(p_{t_max}(·|y), π)`` two ways: ``E_p[(1 − π/p)_+]`` from ``n`` kernel
    samples and ``E_π[(1 − p/π)_+]`` from the prior samples ``prior`` (log-density
    ``lq_prior``); returns both."""
    t = field.t_max
    xk = kernel_sample(field, y, t, n, generator)
    lp = field.kernel_log_prob(xk, y.expand_as(xk), full(n, t))
    lq = field.prior_log_prob(xk)
    tv_k = float((1 - torch.exp(lq - lp)).clamp_min(0).nan_to_num(1.0).mean())
    lp_prior = field.kernel_log_prob(prior, y.expand_as(prior), full(prior.shape[0], t))
    tv_p = float((1 - torch.exp(lp_prior - lq_prior)).clamp_min(0).nan_to_num(1.0).mean())
    return tv_k, tv_p


def _prior_sample(field, d: int, n: int, generator) -> tuple[Tensor, Tensor]:
    prior = field.sample_prior(n, (d,), generator=generator, dtype=DTYPE).to(DTYPE)
    return prior, field.prior_log_prob(prior)


@torch.no_grad()
def check_prior_is_limit(field, d: int, *, seed: int = 0, n: int = 200_000,
                         tol: float = TOLERANCES["prior"]) -> CheckResult:
    """Condition 4 at the data's centre: ``p_{t_max}(·|0) = π``. Residual: the larger of the
    two Monte-Carlo estimates of their total variation (``n`` samples each). This sees a prior
    of the wrong scale (sampler and log-density alike) that the forgetting check, whose
    tolerance must allow for what a kernel at ``t_max`` remembers of ``y``, lets through."""
    g = gen(seed, 7)
    prior, lq_prior = _prior_sample(field, d, n, g)
    tv_k, tv_p = _tv_to_prior(field, torch.zeros(d, dtype=DTYPE), prior, lq_prior, n, g)
    return CheckResult.of("prior = kernel at t_max", max(tv_k, tv_p), tol,
                          f"TV(kernel from y=0, prior) from kernel/prior samples: "
                          f"{tv_k:.3g}/{tv_p:.3g} (n={n})")


@torch.no_grad()
def check_forgets_source(field, d: int, *, seed: int = 0, n: int = 20_000,
                         tol: float = TOLERANCES["forgets"]) -> CheckResult:
    """Condition 4: ``p_{t_max}(·|y) ≈ π`` for ``y = ±(1, …, 1)``: Monte-Carlo total variation
    ``E_p[(1 − π/p)_+]`` (kernel samples) and ``E_π[(1 − p/π)_+]`` (prior samples); residual
    is the largest of the four estimates (standard error < 0.5/sqrt(n))."""
    g = gen(seed, 4)
    prior, lq_prior = _prior_sample(field, d, n, g)
    worst, parts = 0.0, []
    for sign in (1.0, -1.0):
        tv_k, tv_p = _tv_to_prior(field, torch.full((d,), sign, dtype=DTYPE), prior, lq_prior,
                                  n, g)
        parts.append(f"y={'+' if sign > 0 else '-'}1: {tv_k:.3g}/{tv_p:.3g}")
        worst = max(worst, tv_k, tv_p)
    return CheckResult.of("forgets source at t_max", worst, tol,
                          "TV(kernel, prior) from kernel/prior samples, " + ", ".join(parts))
