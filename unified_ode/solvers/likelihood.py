"""Log-likelihood of data under the probability-flow ODE (THEORY.md §7).

Along a solution of ``dx/dt = f(x, t)`` the continuity equation gives ``d/dt log p_t(x_t) =
−∇·f(x_t, t)``, so for data ``x`` at ``t_start ≈ 0``

    log p_{t_start}(x) = log π(x(t_end)) + ∫_{t_start}^{t_end} ∇·f(x_t, t) dt,

with ``π`` the field's prior (:meth:`Field.prior_log_prob`) at ``t_end = t_max``. The augmented
state ``(x, ℓ)``, ``dℓ/dt = ∇·f``, is integrated *upwards* with adaptive Dormand–Prince
(torchdiffeq), in ``t`` or ``ln t``. What is computed is the density at ``t_start`` (the field's
``t_min`` by default) — the data blurred by the kernel at that time — since the drift is
singular at ``t = 0``.

Divergence: ``"exact"`` takes the trace of the Jacobian with ``d`` reverse-mode passes per
evaluation (for ``d ≤ exact_max_dim``, default 64); ``"hutchinson"`` the unbiased estimate
``E_ε[εᵀ (∂f/∂x) ε]`` with Rademacher ``ε``, drawn once per solve and held fixed along the
path (so the ODE is deterministic for the adaptive solver), averaged over ``probes``;
``"auto"`` picks exact up to ``exact_max_dim`` dimensions. NFE counts forward drift
evaluations (each followed by its ``d`` or ``probes`` vector-Jacobian products).

Bits per dimension: ``−log p / (d ln 2)`` for continuous data; for 8-bit images stored as
``x = k/127.5 − 1`` (bin width ``Δ = 1/127.5``) and uniformly dequantised, ``−log p/(d ln 2) +
log2(127.5)`` (:func:`bits_per_dim` with ``bin_width``), an upper bound on the discrete
model's bits per dimension (Jensen), as in Song et al. 2021 and PFGM.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from unified_ode.solvers.adaptive import TIME_VARIABLES, initial_step
from unified_ode.solvers.base import CountingFlow, Drift, DriftFlow

DIVERGENCES = ("auto", "exact", "hutchinson")


@dataclass
class LikelihoodResult:
    """``log_prob``: ``(B,)`` nats, ``log p_{t_start}(x)``; ``prior_log_prob``: ``(B,)`` nats at
    ``x_T``; ``delta``: ``(B,)`` the integrated divergence; ``x_T``: ``(B, *shape)`` the
    encoded states at ``t_end``; ``nfe``: forward drift calls; ``dims``: ``prod(shape)``;
    ``divergence``: the estimator used; ``t_start``, ``t_end``: the integration range."""

    log_prob: Tensor
    prior_log_prob: Tensor
    delta: Tensor
    x_T: Tensor
    nfe: int
    dims: int
    divergence: str
    t_start: float
    t_end: float

    def bits_per_dim(self, bin_width: float | None = None) -> Tensor:
        """``(B,)`` bits per dimension; see :func:`bits_per_dim`."""
        return bits_per_dim(self.log_prob, self.dims, bin_width)


def bits_per_dim(log_prob: Tensor, dims: int, bin_width: float | None = None) -> Tensor:
    """``−log p / (d ln 2)``, plus ``−log2(bin_width)`` for data quantised into bins of that
    width (8-bit images in ``[-1, 1]``: ``bin_width = 1/127.5``, adding ``log2 127.5 ≈ 6.994``
    bits). ``log_prob`` ``(B,)`` nats; returns ``(B,)``."""
    bpd = -log_prob / (dims * math.log(2.0))
    if bin_width is not None:
        bpd = bpd - math.log2(bin_width)
    return bpd


def divergence_exact(f: Tensor, x: Tensor) -> Tensor:
    """``tr(∂f/∂x)`` per row by ``d`` reverse-mode passes: ``f``, ``x`` ``(B, *shape)`` with
    ``f`` computed from ``x`` (rows independent); returns ``(B,)``."""
    ff = f.flatten(1)
    div = torch.zeros(ff.shape[0], dtype=f.dtype, device=f.device)
    for i in range(ff.shape[1]):
        (g,) = torch.autograd.grad(ff[:, i].sum(), x, retain_graph=True)
        div = div + g.flatten(1)[:, i]
    return div


def divergence_hutchinson(f: Tensor, x: Tensor, probes: Tensor) -> Tensor:
    """Hutchinson estimate ``mean_k ε_kᵀ (∂f/∂x) ε_k``: ``probes`` ``(K, B, *shape)``;
    returns ``(B,)``."""
    div = torch.zeros(f.shape[0], dtype=f.dtype, device=f.device)
    for k in range(probes.shape[0]):
        (g,) = torch.autograd.grad(f, x, probes[k], retain_graph=True)
        div = div + (g * probes[k]).flatten(1).sum(1)
    return div / probes.shape[0]


def rademacher(shape, *, generator=None, device=None, dtype=torch.float32) -> Tensor:
    """Entries ±1 with probability 1/2 each."""
    r = torch.randint(0, 2, shape, generator=generator, device=device)
    return (2 * r - 1).to(dtype)


def drift_divergence(drift: Drift, x: Tensor, t: Tensor, divergence: str,
                     probes: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(f(x, t), ∇·f(x, t))`` with ``f`` and the divergence detached; ``divergence`` is
    ``"exact"`` or ``"hutchinson"`` (then ``probes`` ``(K, *x.shape)``)."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        f = drift(xg, t)
        if not f.requires_grad:
            raise ValueError(
                "the likelihood needs a drift differentiable in x, but this model's output "
                "carries no gradient (is its forward wrapped in torch.no_grad()?)")
        if divergence == "exact":
            div = divergence_exact(f, xg)
        else:
            div = divergence_hutchinson(f, xg, probes)
    return f.detach(), div.detach()


def log_likelihood(drift: Drift, field, x: Tensor, *, divergence: str = "auto",
                   probes: int = 1, exact_max_dim: int = 64, t_start: float | None = None,
                   t_end: float | None = None, rtol: float = 1e-5, atol: float = 1e-5,
                   time_variable: str = "log", generator: torch.Generator | None = None,
                   progress: Callable[[float], None] | None = None) -> LikelihoodResult:
    """``log p_{t_start}(x)`` for data ``x`` ``(B, *shape)`` under the ODE of ``drift`` and the
    prior of ``field``; see the module docstring. ``progress(t)`` is called at every drift
    evaluation (for a progress bar)."""
    from torchdiffeq import odeint

    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if time_variable not in TIME_VARIABLES:
        raise ValueError(f"time_variable must be one of {TIME_VARIABLES}, got {time_variable!r}")
    dims = int(math.prod(x.shape[1:]))
    if divergence == "auto":
        divergence = "exact" if dims <= exact_max_dim else "hutchinson"
    if divergence == "hutchinson" and int(probes) < 1:
        raise ValueError(f"hutchinson needs probes >= 1, got {probes}")
    t0 = float(field.t_min if t_start is None else t_start)
    t1 = float(field.t_max if t_end is None else t_end)
    if not 0 < t0 < t1:
        raise ValueError(f"the likelihood integrates over 0 < t_start < t_end, got {t0}, {t1}")
    log = time_variable == "log"
    eps = None
    if divergence == "hutchinson":
        eps = rademacher((int(probes), *x.shape), generator=generator, dtype=x.dtype)
        eps = eps.to(x.device)
    counter = CountingFlow(DriftFlow(drift))
    b, shape = x.shape[0], x.shape[1:]

    def rate(u: Tensor, state: Tensor) -> Tensor:
        t = (u.exp() if log else u).to(dtype=state.dtype)
        if progress is not None:
            progress(float(t))
        xs = state[:, :dims].reshape(b, *shape)
        f, div = drift_divergence(counter.drift, xs, t, divergence, eps)
        out = torch.cat([f.flatten(1), div[:, None]], dim=1)
        return t * out if log else out

    state0 = torch.cat([x.detach().flatten(1), x.new_zeros(b, 1)], dim=1)  # (B, d + 1)
    u = torch.tensor([t0, t1], dtype=torch.float64)
    u = (u.log() if log else u).to(x.device)
    first_step, f0 = initial_step(rate, u[0], u[1], state0, rtol, atol)
    cache = [f0]

    def func(uu: Tensor, state: Tensor) -> Tensor:
        return cache.pop() if cache else rate(uu, state)

    out = odeint(func, state0, u, rtol=rtol, atol=atol, method="dopri5",
                 options={"first_step": first_step, "step_t": u[-1:]})[-1]
    x_T = out[:, :dims].reshape(b, *shape)
    delta = out[:, dims]
    prior = field.prior_log_prob(x_T)
    return LikelihoodResult(log_prob=prior + delta, prior_log_prob=prior, delta=delta, x_T=x_T,
                            nfe=counter.calls, dims=dims, divergence=divergence, t_start=t0,
                            t_end=t1)


__all__ = ["DIVERGENCES", "LikelihoodResult", "bits_per_dim", "divergence_exact",
           "divergence_hutchinson", "drift_divergence", "log_likelihood", "rademacher"]
