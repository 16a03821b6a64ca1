"""What sampling integrates: the exact posterior of a small data set, and the drift from it.

For data ``{y_i}`` the ideal generative ODE is ``dx/dt = Σ_i w_i v(x, t | y_i)``, the posterior
``w_i ∝ p_t(x | y_i)``-weighted conditional velocity (THEORY.md §7). A field with a denoiser
form integrates instead ``field.drift_from_denoiser(x, t, D)`` with the denoiser
``D = Σ_i w_i y_i``; the two must be equal. Neither the divergence nor the sampler checks can
see a wrong ``drift_from_denoiser`` (it is used by sampling only), so it is checked here, with
the posterior computed independently of :class:`~unified_ode.physics.exact.ExactPosterior`:
``w = softmax_i(pairwise_kernel_log_prob(x, y)_i)`` in float64. That the pairwise log-density
(the exact field's, overridden by isotropic fields for speed) equals ``kernel_log_prob`` on
every pair is checked too.

Points: ``m = 16`` data points ``N(0, I)``; ``n = 256`` states, each drawn from the kernel of a
random data point at a time log-uniform in ``[t_min, t_max]`` (so the posterior is neither
uniform nor one-hot over the range of times).
"""

from __future__ import annotations

import torch
from torch import Tensor

from unified_ode.physics.validator.base import TOLERANCES, CheckResult
from unified_ode.physics.validator.numerics import data_points, gen, log_uniform_times


def _states(field, d: int, m: int, n: int, seed: int, salt: int):
    """``(data (m, d), x (n, d), t (n,))`` in float64, ``x`` drawn from the kernels."""
    g = gen(seed, salt)
    data = data_points(m, d, g)
    t = log_uniform_times(field, n, g)
    source = data[torch.randint(0, m, (n,), generator=g)]
    x = field.sample_kernel(source, t, generator=g).to(data.dtype)
    return data, x, t


def _pairs(x: Tensor, y: Tensor, t: Tensor):
    """Every ``(x_i, y_j, t_i)`` as rows: ``(n·m, d)``, ``(n·m, d)``, ``(n·m,)``."""
    n, m = x.shape[0], y.shape[0]
    return (x[:, None].expand(n, m, -1).reshape(n * m, -1),
            y[None].expand(n, m, -1).reshape(n * m, -1),
            t[:, None].expand(n, m).reshape(-1))


@torch.no_grad()
def check_pairwise_log_prob(field, d: int, *, seed: int = 0, m: int = 16, n: int = 256,
                            tol: float = TOLERANCES["pairwise"]) -> CheckResult:
    """``pairwise_kernel_log_prob(x, y, t)[i, j] == kernel_log_prob(x_i, y_j, t_i)``. Residual:
    ``max |a − b| / (1 + |b|)`` over pairs of positive density; where the density is 0
    (``−inf``) the pairwise value must give the pair a posterior weight of exactly 0."""
    data, x, t = _states(field, d, m, n, seed, 8)
    pairwise = field.pairwise_kernel_log_prob(x, data, t).to(data.dtype)
    if pairwise.shape != (n, m):
        return CheckResult.of("pairwise log-density", float("inf"), tol,
                              f"returned shape {tuple(pairwise.shape)}, expected {(n, m)}")
    direct = field.kernel_log_prob(*_pairs(x, data, t)).view(n, m).to(data.dtype)
    finite = torch.isfinite(direct)
    # where the density is 0 the pairwise value may be any finite number whose posterior
    # weight underflows to exactly 0 (a floored log-density keeps the exact field finite
    # outside bounded supports): more than 800 nats below the row's largest log-density
    row_max = torch.where(finite, direct, torch.full_like(direct, -torch.inf)).amax(1)
    negligible = (pairwise == -torch.inf) | (pairwise < row_max[:, None] - 800.0)
    bad = (finite & ~torch.isfinite(pairwise)) | (~finite & ~negligible)
    if torch.any(bad):
        return CheckResult.of("pairwise log-density", float("inf"), tol,
                              f"{int(bad.sum())} of {n * m} pairs: density 0 in one and not "
                              "in the other")
    rel = (pairwise - direct)[finite].abs() / (1 + direct[finite].abs())
    return CheckResult.of("pairwise log-density", float(rel.max()), tol,
                          f"max |pairwise - kernel_log_prob|/(1+|.|) over {n}x{m} pairs")


def has_denoiser_form(field, d: int) -> bool:
    """Whether the field says it has a denoiser form (``Field.has_denoiser_form``), or, for a
    class that does not say, whether ``drift_from_denoiser`` exists and does not raise
    :class:`NotImplementedError` on a probe state."""
    if isinstance(getattr(field, "has_denoiser_form", None), bool):
        return field.has_denoiser_form
    method = getattr(field, "drift_from_denoiser", None)
    if method is None:
        return False
    x = torch.zeros(1, d, dtype=torch.float64)
    try:
        method(x, torch.full((1,), field.t_max, dtype=torch.float64), x)
    except NotImplementedError:
        return False
    return True


@torch.no_grad()
def check_exact_drift(field, d: int, *, seed: int = 0, m: int = 16, n: int = 256,
                      tol: float = TOLERANCES["drift"]) -> CheckResult:
    """``drift_from_denoiser(x, t, Σ w_i y_i) == Σ w_i v(x, t | y_i)`` with the exact posterior
    ``w``. Residual: ``max ||drift − Σ w v|| / Σ w_i ||v_i||`` over ``n`` states."""
    name = "denoiser drift = exact velocity"
    if not has_denoiser_form(field, d):
        return CheckResult.not_applicable(name, tol, "no denoiser form: objective=velocity "
                                          "only")
    data, x, t = _states(field, d, m, n, seed, 6)
    logits = field.pairwise_kernel_log_prob(x, data, t).to(data.dtype)
    w = torch.softmax(logits, dim=1)  # (n, m)
    if not torch.all(torch.isfinite(w)):
        return CheckResult.of(name, float("nan"), tol, "posterior not finite: a kernel sample "
                              "has zero density under every data point")
    drift = field.drift_from_denoiser(x, t, w @ data).to(data.dtype)
    v = field.conditional_velocity(*_pairs(x, data, t)).view(n, m, d).to(data.dtype)
    v = torch.where(w[..., None] > 0, v, torch.zeros_like(v))
    exact = torch.einsum("nm,nmd->nd", w, v)
    scale = torch.einsum("nm,nm->n", w, v.norm(dim=2))
    rel = (drift - exact).norm(dim=1) / scale.clamp_min(torch.finfo(data.dtype).tiny)
    worst = int(torch.argmax(torch.nan_to_num(rel, nan=float("inf"))))
    return CheckResult.of(name, float(rel[worst]), tol,
                          f"max ||drift - sum w v|| / sum w ||v|| over {n} states, {m} data "
                          f"points; worst at t={float(t[worst]):.3g}")
