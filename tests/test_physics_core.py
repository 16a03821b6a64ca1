"""Exact checks of the first two fields (poisson, ve): kernels, priors, exact-field transport."""

from __future__ import annotations

import math

import pytest
import torch

from unified_ode.physics import ExactPosterior, PoissonField, VEField
from unified_ode.physics.validator import interp, kernel_radius_cdf, kernel_radius_ks
from unified_ode.solvers import Euler, Heun

FIELDS = {"poisson": PoissonField, "ve": VEField}
KS_CRIT = 1.95 / math.sqrt(8000)


@pytest.mark.parametrize("name", sorted(FIELDS))
@pytest.mark.parametrize("d", [2, 3, 8])
@pytest.mark.parametrize("t", [0.05, 1.0, 20.0])
def test_kernel_sampler_matches_log_density(name, d, t):
    """KS test of sampled radii against the CDF integrated from the log-density.
    n = 8000: the 99.9% KS critical value is 1.95/sqrt(n) = 0.0218 (seeded, so repeatable)."""
    res = kernel_radius_ks(FIELDS[name](), t, d, n=8000, seed=d)
    assert abs(res["flux"] - 1.0) < 1e-5, res  # unit flux: the kernel is a density
    assert res["ks"] < KS_CRIT, res


def test_kernel_ks_detects_a_wrong_sampler():
    """The check can fail: a VE sampler with a 10% wrong scale is rejected."""
    field = VEField()

    class Wrong(VEField):
        def sample_kernel(self, y, t, *, generator=None):
            return super().sample_kernel(y, t * 1.1, generator=generator)

    assert kernel_radius_ks(field, 1.0, 3, n=8000)["ks"] < KS_CRIT
    assert kernel_radius_ks(Wrong(), 1.0, 3, n=8000)["ks"] > 2 * KS_CRIT


def test_poisson_kernel_is_multivariate_cauchy():
    """PFGM's kernel in closed form: p(x|y) = Γ((d+1)/2)/π^((d+1)/2) · t/(t²+r²)^((d+1)/2)."""
    field = PoissonField()
    d, t = 3, 0.7
    x = torch.randn(50, d, dtype=torch.float64)
    y = torch.randn(50, d, dtype=torch.float64)
    r2 = (x - y).pow(2).sum(1)
    expected = (math.lgamma((d + 1) / 2) - (d + 1) / 2 * math.log(math.pi) + math.log(t)
                - (d + 1) / 2 * torch.log(t**2 + r2))
    got = field.kernel_log_prob(x, y, torch.full((50,), t, dtype=torch.float64))
    torch.testing.assert_close(got, expected)


def test_poisson_radius_is_beta_prime():
    """R = t sqrt(B/(1-B)), B ~ Beta(d/2, 1/2): compare the integrated CDF with scipy's."""
    from scipy import stats

    d, t = 5, 2.0
    r, cdf = kernel_radius_cdf(PoissonField(), t, d)
    probe = torch.tensor([0.5, 1.0, 3.0, 10.0, 100.0], dtype=torch.float64)
    ours = interp(probe, r, cdf)
    b = (probe / t) ** 2 / (1 + (probe / t) ** 2)
    ref = torch.from_numpy(stats.beta(d / 2, 0.5).cdf(b.numpy()))
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_prior_is_kernel_at_t_max(name):
    field = FIELDS[name]()
    x = field.sample_prior(64, (4,), dtype=torch.float64)
    t = torch.full((64,), field.t_max, dtype=torch.float64)
    torch.testing.assert_close(field.prior_log_prob(x),
                               field.kernel_log_prob(x, torch.zeros_like(x), t))


def test_poisson_prior_clipping():
    field = PoissonField(clip_radius=(1.0, 100.0))
    x = field.sample_prior(5000, (2,), generator=torch.Generator().manual_seed(0))
    norms = x.norm(dim=1)
    assert norms.min() >= 1.0 - 1e-5 and norms.max() <= 100.0 + 1e-3
    assert (norms > 99.9).float().mean() > 0.3  # the heavy tail really was clipped
    with pytest.raises(ValueError, match="lower < upper"):
        PoissonField(clip_radius=(5.0, 1.0))


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_conditional_velocity_moves_kernel_samples_along_rays(name):
    """For x = y + t·eps the conditional velocity is eps = (x - y)/t (straight rays)."""
    field = FIELDS[name]()
    y = torch.randn(16, 3, dtype=torch.float64)
    t = torch.rand(16, dtype=torch.float64) + 0.1
    x = field.sample_kernel(y, t)
    torch.testing.assert_close(field.conditional_velocity(x, y, t), (x - y) / t[:, None])
    # drift from the true source as denoiser equals the conditional velocity
    torch.testing.assert_close(field.drift_from_denoiser(x, t, y),
                               field.conditional_velocity(x, y, t))


def _exact_transport(field, data, steps, n=300, seed=1):
    model = ExactPosterior(field, data)

    def drift(x, t):
        tb = t.expand(x.shape[0])
        return field.drift_from_denoiser(x, tb, model(x, tb))

    g = torch.Generator().manual_seed(seed)
    x_T = field.sample_prior(n, tuple(data.shape[1:]), generator=g, dtype=torch.float64)
    return Heun(steps=steps).solve(drift, x_T, field.default_grid(steps))


@pytest.mark.parametrize(("field", "tol"), [
    (VEField(), 1e-3),
    (PoissonField(t_min=1e-5, clip_radius=(1.0, 3000.0)), 1e-3),
    (PoissonField(t_min=1e-5), 1e-3),
])
def test_exact_field_lands_on_data(field, tol):
    """Integrating the exact field of 32 points in 2-D from the prior (Heun, 40 steps) ends
    within ``tol`` of a data point for every sample."""
    data = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = _exact_transport(field, data, steps=40)
    dist = torch.cdist(result.x, data).min(1).values
    assert result.nfe == 79
    assert dist.max() < tol, dist.max()
    # and every data point is reached by some sample (no collapse onto a few points)
    assert len(torch.unique(torch.cdist(result.x, data).argmin(1))) >= 28


def test_exact_posterior_chunking_is_exact():
    """Streaming log-sum-exp over data chunks equals the one-shot softmax."""
    field = PoissonField()
    data = torch.randn(100, 6, dtype=torch.float64)
    x = torch.randn(40, 6, dtype=torch.float64) * 2
    t = torch.full((40,), 0.3, dtype=torch.float64)
    chunked = ExactPosterior(field, data, query_chunk=7, data_chunk=13)(x, t)
    w = torch.softmax(field.pairwise_kernel_log_prob(x, data, t), dim=1)
    torch.testing.assert_close(chunked, w @ data)


@pytest.mark.parametrize(("solver", "steps", "nfe"), [(Euler, 20, 20), (Heun, 18, 35),
                                                      (Heun, 1, 1), (Euler, 1, 1)])
def test_nfe_is_counted(solver, steps, nfe):
    field = VEField()
    calls = []

    def drift(x, t):
        calls.append(float(t))
        return -x

    res = solver(steps=steps).solve(drift, torch.ones(3, 2), field.default_grid(steps))
    assert res.nfe == nfe == len(calls)
    assert res.times[-1] == 0 and res.times[0] == field.t_max


@pytest.mark.slow
def test_exact_field_memory_is_bounded_at_cifar_scale():
    """10,000 data points x 1,000 queries in 3,072 dimensions (CIFAR-10's size), in a fresh
    process: the peak resident memory stays below 1.5 GB. The inputs alone are ~270 MB in
    float64; a broadcast (queries x data x d) computation of one default chunk would need
    256 x 2048 x 3072 x 8 B = 12.9 GB."""
    import subprocess
    import sys

    code = (
        "import resource, torch\n"
        "from unified_ode.physics import ExactPosterior, PoissonField\n"
        "torch.set_num_threads(2)\n"
        "g = torch.Generator().manual_seed(0)\n"
        "data = torch.rand(10_000, 3, 32, 32, generator=g, dtype=torch.float64) * 2 - 1\n"
        "field = PoissonField()\n"
        "x = field.sample_prior(1000, (3, 32, 32), generator=g, dtype=torch.float64)\n"
        "out = ExactPosterior(field, data)(x * 1e-3, torch.full((1000,), 5.0))\n"
        "assert out.shape == (1000, 3, 32, 32) and torch.isfinite(out).all()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    peak_mb = int(proc.stdout.split()[-1]) / 1024  # ru_maxrss is in KiB on Linux
    assert peak_mb < 1500, f"peak RSS {peak_mb:.0f} MB"
