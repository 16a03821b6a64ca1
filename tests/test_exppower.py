"""The exponential-power field of issue 17: a valid Green's field for every tail index β, VE
exactly at β = 2, unit variance per coordinate for every β and d."""

import math

import pytest
import torch

from unified_ode.physics import ExpPowerField, VEField
from unified_ode.physics.validator import format_table, validate_field


@pytest.mark.parametrize("beta", [0.5, 1.5, 4.0])
def test_validator_passes(beta):
    results = validate_field(ExpPowerField(beta=beta), 2, seed=0)
    assert all(r.passed for r in results), format_table(results)


def test_beta_two_is_ve_exactly():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, generator=g, dtype=torch.float64), torch.randn(
        64, 3, generator=g, dtype=torch.float64)
    t = torch.rand(64, generator=g, dtype=torch.float64) * 5 + 0.01
    ep, ve = ExpPowerField(beta=2.0), VEField()
    torch.testing.assert_close(ep.kernel_log_prob(x, y, t), ve.kernel_log_prob(x, y, t),
                               rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(ep.prior_log_prob(x * 30), ve.prior_log_prob(x * 30),
                               rtol=1e-13, atol=1e-10)


@pytest.mark.parametrize("beta,d", [(0.7, 2), (1.0, 5), (6.0, 3)])
def test_unit_variance_and_radius_law(beta, d):
    """E||eps||² = d (unit per-coordinate variance) by sampling, and the sampled radius's
    mean matches the closed form α Γ((d+1)/β)/Γ(d/β)."""
    noise = ExpPowerField(beta=beta).noise
    eps = noise.sample((200_000, d), generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64)
    r = eps.norm(dim=1)
    assert abs(float(r.pow(2).mean()) / d - 1) < 0.02
    mean_r = noise.alpha(d) * math.exp(math.lgamma((d + 1) / beta) - math.lgamma(d / beta))
    assert abs(float(r.mean()) / mean_r - 1) < 0.01


def test_bad_beta_is_a_clear_error():
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="tail index"):
            ExpPowerField(beta=bad)
