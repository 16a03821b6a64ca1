"""PFGM's normalised empirical field objective (THEORY.md §6) and its prediction kind."""

from __future__ import annotations

import math

import pytest
import torch

from unified_ode.errors import UserError
from unified_ode.networks import MLP
from unified_ode.networks.precond import Preconditioned
from unified_ode.objectives import PFGMNormalisedObjective, empirical_poisson_field
from unified_ode.parametrisation import Denoiser, PFGMNormalisedField, ProbabilityFlow
from unified_ode.physics import ExactPosterior, PFGMPPField, PoissonField, VEField
from unified_ode.solvers import Heun


def naive_field(x: torch.Tensor, t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Unchunked reference, the direct (d+1)-dimensional computation: all B × M difference
    vectors, weights ||(x,t) − (y,0)||^(−(d+1)) normalised to sum 1."""
    d = x.shape[1]
    pts = torch.cat([x, t[:, None]], 1)[:, None, :]                     # (B, 1, d+1)
    src = torch.cat([ref, torch.zeros(ref.shape[0], 1, dtype=ref.dtype)], 1)[None]
    diff = pts - src                                                    # (B, M, d+1)
    dist = diff.norm(dim=2)
    w = (dist.min(1, keepdim=True).values / dist) ** (d + 1)            # PFGM's stable form
    w = w / w.sum(1, keepdim=True)
    return -(w[:, :, None] * diff).sum(1)


@pytest.mark.parametrize("d", [2, 5])
def test_chunked_field_equals_unchunked(d):
    g = torch.Generator().manual_seed(d)
    ref = torch.randn(300, d, generator=g, dtype=torch.float64)
    x = 2 * torch.randn(40, d, generator=g, dtype=torch.float64)
    t = torch.exp(torch.randn(40, generator=g, dtype=torch.float64) * 2)
    expected = naive_field(x, t, ref)
    for chunk in (1, 7, 64, 300, 1000):
        got = empirical_poisson_field(x, t, ref, chunk=chunk)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_empirical_field_is_the_exact_poisson_posterior():
    """With weights summing to 1, E = −(x − D, t) where D is the exact Poisson denoiser of the
    reference set, so the normalised target is a function of the exact field."""
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(200, 3, generator=g, dtype=torch.float64)
    x = 3 * torch.randn(30, 3, generator=g, dtype=torch.float64)
    t = torch.rand(30, generator=g, dtype=torch.float64) * 5 + 0.01
    e = empirical_poisson_field(x, t, ref, chunk=16)
    denoiser = ExactPosterior(PoissonField(), ref, data_chunk=50)(x, t)
    torch.testing.assert_close(e[:, :3], denoiser - x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(e[:, 3], -t)


def test_target_is_sqrt_d_E_over_norm_plus_gamma():
    g = torch.Generator().manual_seed(1)
    ref = torch.randn(100, 4, generator=g, dtype=torch.float64)
    x = torch.randn(20, 4, generator=g, dtype=torch.float64) * 4
    t = torch.rand(20, generator=g, dtype=torch.float64) + 0.1
    e = naive_field(x, t, ref)
    full = math.sqrt(4) * e / (e.norm(dim=1, keepdim=True) + 3.0)
    target = PFGMNormalisedObjective(gamma=3.0, chunk=13).targets(x, t, ref)
    torch.testing.assert_close(target, full[:, :4], rtol=1e-12, atol=1e-12)


def test_normalized_field_inverts_exactly():
    """The drift uses D recovered from v = normalized_field(x, t, D): exact round trip, at
    every scale of t and ||x − D|| (including far-out prior points)."""
    param = PFGMNormalisedField(PoissonField())
    g = torch.Generator().manual_seed(2)
    for d in (2, 16):
        scales = torch.logspace(-3, 3, 64, dtype=torch.float64)[:, None]
        x = torch.randn(64, d, generator=g, dtype=torch.float64) * scales
        den = torch.randn(64, d, generator=g, dtype=torch.float64)
        t = torch.logspace(-3, 2, 64, dtype=torch.float64)[torch.randperm(64, generator=g)]
        v = param.from_denoiser(x, t, den)
        assert float(v.norm(dim=1).max()) < math.sqrt(d)
        back = param.to_denoiser(x, t, v)
        torch.testing.assert_close(back, den, rtol=1e-8, atol=1e-8 * float(x.abs().max()))


def test_exact_normalized_field_drift_equals_denoiser_drift_and_lands_on_data():
    """ExactPosterior and the drift treat the new prediction kind consistently: the exact
    normalised field gives the same ODE as the exact denoiser, and its samples land on the
    data points."""
    data = torch.tensor([[1.0, 0.5], [-1.0, -0.5], [0.3, -1.2]], dtype=torch.float64)
    field = PoissonField()
    pfgm, den = PFGMNormalisedField(field), Denoiser(field)
    flow_pfgm = ProbabilityFlow(pfgm, ExactPosterior(field, data, parametrisation=pfgm))
    flow_den = ProbabilityFlow(den, ExactPosterior(field, data, parametrisation=den))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(50, 2, generator=g, dtype=torch.float64) * 3
    t = torch.rand(50, generator=g, dtype=torch.float64) * 10 + 0.01
    torch.testing.assert_close(flow_pfgm.drift(x, t), flow_den.drift(x, t), rtol=1e-8,
                               atol=1e-8)
    x_T = field.sample_prior(64, (2,), generator=g, dtype=torch.float64)
    solver = Heun(steps=40)

    def solve(flow):
        return solver.solve(flow, x_T, solver.time_grid(field)).x

    x0 = solve(flow_pfgm)
    torch.testing.assert_close(x0, solve(flow_den), rtol=1e-6, atol=1e-6)
    nearest = torch.cdist(x0, data).min(1).values
    assert float(nearest.median()) < 1e-4 and float((nearest < 1e-2).double().mean()) > 0.9


def test_reference_buffer_keeps_recent_training_batches():
    obj = PFGMNormalisedObjective(reference_size=10, small_batch=2)
    batches = [torch.full((4, 2), float(i)) for i in range(4)]
    refs = [obj.reference(b) for b in batches]
    assert refs[0].shape[0] == 4 and refs[1].shape[0] == 8
    assert refs[3].shape[0] == 10
    # newest first: batch 3, batch 2, then the first two rows of batch 1
    assert refs[3][:4].eq(3).all() and refs[3][4:8].eq(2).all() and refs[3][8:].eq(1).all()


def test_objective_binds_only_to_the_poisson_field_and_names_valid_choices():
    obj = PFGMNormalisedObjective(gamma=2.0, reference_size=512, small_batch=32)
    param = obj.bind(PoissonField())
    assert isinstance(param, PFGMNormalisedField) and param.gamma == 2.0
    assert isinstance(obj.bind(PFGMPPField(D=1)), PFGMNormalisedField)
    with pytest.raises(UserError, match=r"cannot train physics=ve.*objective=denoiser, "
                                        r"objective=velocity\."):
        obj.bind(VEField())
    with pytest.raises(ValueError, match="gamma"):
        PFGMNormalisedObjective(gamma=-1)
    with pytest.raises(ValueError, match="small_batch"):
        PFGMNormalisedObjective(small_batch=0)


def test_pfgm_objective_reduces_the_loss():
    """200 Adam steps of a small MLP on a 2-D mixture: the held-out PFGM loss (fixed draws)
    falls well below its value at initialisation."""
    torch.manual_seed(0)
    field = PoissonField()
    objective = PFGMNormalisedObjective(reference_size=1024, small_batch=128)
    model = Preconditioned(MLP(data_shape=[2], width=64, depth=2, time_embed_dim=16),
                           objective.bind(field), sigma_data=1.0)
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[1.5, 0.0], [-1.5, 0.0], [0.0, 1.5]])

    def batch(n, gen):
        return centers[torch.randint(0, 3, (n,), generator=gen)] + 0.1 * torch.randn(
            n, 2, generator=gen)

    def eval_loss():
        ev = PFGMNormalisedObjective(reference_size=1024, small_batch=512)
        ev.reference(batch(512, torch.Generator().manual_seed(99)))
        with torch.no_grad():
            return float(ev(model, field, batch(512, torch.Generator().manual_seed(98)),
                            generator=torch.Generator().manual_seed(97)))

    before = eval_loss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(200):
        loss = objective(model, field, batch(256, g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.5 * before, (before, after)
