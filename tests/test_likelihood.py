"""Likelihood under the probability-flow ODE against closed forms.

Data ``y ~ N(0, Σ)`` under the VE field: ``p_t = N(0, Σ + t² I)``, the ideal denoiser is
``D(x, t) = Σ (Σ + t² I)^{-1} x`` and the ODE ``dx/dt = (x − D)/t = t (Σ + t² I)^{-1} x`` moves
each eigen-coordinate of ``Σ`` (eigenvalue ``λ``) by the factor ``sqrt((λ + t²)/(λ + t0²))``.
So the model's log-density at ``t0`` — the prior ``N(0, T² I)`` pulled back by that linear map
— is known exactly, and it differs from the true ``log N(x; 0, Σ + t0² I)`` only by the prior's
mismatch ``N(0, T² I)`` vs ``N(0, Σ + T² I)`` (tiny at T = 80).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.conftest import run_script
from unified_ode.physics import VEField
from unified_ode.solvers.likelihood import (
    bits_per_dim,
    divergence_exact,
    divergence_hutchinson,
    log_likelihood,
    rademacher,
)

F64 = torch.float64


class GaussianDenoiser(nn.Module):
    """The ideal VE denoiser of ``N(0, Σ)`` data: ``D(x, t) = Σ (Σ + t² I)^{-1} x``."""

    def __init__(self, cov: torch.Tensor):
        super().__init__()
        self.evals, self.evecs = torch.linalg.eigh(cov)

    def forward(self, x, t):
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])[:, None]
        z = x @ self.evecs
        return (z * self.evals / (self.evals + t**2)) @ self.evecs.T


def gaussian_case(d=6, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    evals = torch.linspace(0.25, 2.0, d, dtype=F64)
    cov = q @ torch.diag(evals) @ q.T
    field = VEField()
    den = GaussianDenoiser(cov)

    def drift(x, t):
        tb = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])
        return field.drift_from_denoiser(x, tb, den(x, tb))

    x = torch.randn(n, d, generator=g, dtype=F64) @ (q @ torch.diag(evals.sqrt()) @ q.T)
    return field, drift, cov, x


def model_log_prob(x, cov, t0, T):
    """Exact log-density at t0 of the prior N(0, T² I) pulled back by the ODE's linear flow."""
    evals, evecs = torch.linalg.eigh(cov)
    k = torch.sqrt((evals + T**2) / (evals + t0**2))
    xT = (x @ evecs) * k
    d = x.shape[1]
    prior = -0.5 * d * math.log(2 * math.pi * T**2) - 0.5 * (xT**2).sum(1) / T**2
    return prior + torch.log(k).sum()


def true_log_prob(x, cov, t0):
    c = cov + t0**2 * torch.eye(cov.shape[0], dtype=F64)
    return torch.distributions.MultivariateNormal(torch.zeros(cov.shape[0], dtype=F64),
                                                  c).log_prob(x)


@pytest.mark.parametrize("time_variable", ["log", "t"])
def test_exact_divergence_likelihood_matches_closed_form(time_variable):
    """|error| < 2e-4 nats/dim against the exact model density (ODE tolerance 1e-7), and
    < 2e-3 nats/dim against the true data density (the prior mismatch at T = 80)."""
    field, drift, cov, x = gaussian_case()
    res = log_likelihood(drift, field, x, divergence="exact", rtol=1e-7, atol=1e-7,
                         time_variable=time_variable)
    d = x.shape[1]
    exact = model_log_prob(x, cov, field.t_min, field.t_max)
    assert (res.log_prob - exact).abs().max() / d < 2e-4
    assert (res.log_prob - true_log_prob(x, cov, field.t_min)).abs().max() / d < 2e-3
    assert res.divergence == "exact" and res.nfe > 10
    # bits/dim is -log p / (d ln 2), plus log2(127.5) for 8-bit images in [-1, 1]
    bpd = res.bits_per_dim()
    assert torch.allclose(bpd, -res.log_prob / (d * math.log(2)))
    assert torch.allclose(res.bits_per_dim(1 / 127.5), bpd + math.log2(127.5))


def test_hutchinson_divergence_is_unbiased_at_a_point():
    """At fixed (x, t), the Hutchinson mean over 4000 Rademacher probes is within 4 standard
    errors of the exact trace (the Jacobian is dense: Σ is not diagonal)."""
    field, drift, cov, x = gaussian_case(n=8)
    t = torch.tensor(0.7, dtype=F64)
    xg = x.clone().requires_grad_(True)
    f = drift(xg, t)
    exact = divergence_exact(f, xg)
    probes = rademacher((4000, *x.shape), generator=torch.Generator().manual_seed(1), dtype=F64)
    per_probe = torch.stack([divergence_hutchinson(f, xg, probes[k:k + 1])
                             for k in range(probes.shape[0])])
    mean, se = per_probe.mean(0), per_probe.std(0) / math.sqrt(probes.shape[0])
    assert torch.all(per_probe.std(0) > 1e-3)  # the estimator is genuinely random here
    assert torch.all((mean - exact).abs() < 4 * se + 1e-12), (mean, exact, se)
    # the closed form: div f = t · tr((Σ + t² I)^{-1})
    closed = t * torch.linalg.inv(cov + t**2 * torch.eye(cov.shape[0], dtype=F64)).trace()
    assert torch.allclose(exact, closed.expand_as(exact), atol=1e-10)


def test_hutchinson_likelihood_agrees_with_exact_in_expectation():
    """Along the whole ODE: the mean over 256 points of (Hutchinson − exact) log-likelihood is
    within 4 standard errors of 0, while single points differ (it is an estimate)."""
    field, drift, cov, x = gaussian_case(n=256, seed=2)
    ex = log_likelihood(drift, field, x, divergence="exact", rtol=1e-6, atol=1e-6)
    hu = log_likelihood(drift, field, x, divergence="hutchinson", probes=1, rtol=1e-6,
                        atol=1e-6, generator=torch.Generator().manual_seed(5))
    diff = hu.log_prob - ex.log_prob
    se = diff.std() / math.sqrt(len(diff))
    assert diff.std() > 1e-3
    assert diff.mean().abs() < 4 * se, (diff.mean(), se)


def test_auto_divergence_and_errors():
    field, drift, _, x = gaussian_case(n=4)
    assert log_likelihood(drift, field, x, rtol=1e-3, atol=1e-3).divergence == "exact"
    res = log_likelihood(drift, field, x, exact_max_dim=3, rtol=1e-3, atol=1e-3)
    assert res.divergence == "hutchinson"
    with pytest.raises(ValueError, match="divergence"):
        log_likelihood(drift, field, x, divergence="trace")

    def frozen(x, t):
        with torch.no_grad():
            return drift(x, t)

    with pytest.raises(ValueError, match="differentiable"):
        log_likelihood(frozen, field, x)
    assert bits_per_dim(torch.tensor([0.0]), 3).item() == 0.0


@pytest.mark.slow
def test_sample_py_likelihood_task(tmp_path):
    """task=likelihood on a trained (tiny, 30-step) MLP run: prints bits/dim and NFE and
    writes likelihood.json."""
    import json

    run = tmp_path / "run"
    run_script("train.py", "trainer.max_steps=30", "dataset.n_train=512", "network.width=32",
               "network.depth=1", "callbacks.metrics.n_samples=200", f"hydra.run.dir={run}")
    out = tmp_path / "lik"
    proc = run_script("sample.py", f"run={run}", "task=likelihood", "likelihood.n=64",
                      "likelihood.rtol=1e-3", "likelihood.atol=1e-3", f"out_dir={out}")
    info = json.loads((out / "likelihood.json").read_text())
    assert "bits/dim:" in proc.stdout and f"NFE: {info['nfe_per_batch'][0]}" in proc.stdout
    assert info["divergence"] == "exact" and info["n"] == 64
    assert math.isfinite(info["bits_per_dim"])
