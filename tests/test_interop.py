"""k-diffusion interop (issue 12 §4): our models as k-diffusion denoisers and back, checked
against our own solvers on exact fields (same grid, same prior draws)."""

from __future__ import annotations

import pytest
import torch

from unified_ode.interop import KDiffusionDenoiser, KDiffusionFlow, load_k_diffusion
from unified_ode.parametrisation import ProbabilityFlow
from unified_ode.physics import LinearField, PFGMPPField, RadialGeneralField, VEField, VPField
from unified_ode.solvers import IPNDM, UniPC

F64 = torch.float64
DATA = torch.randn(8, 2, generator=torch.Generator().manual_seed(4), dtype=F64)


def k_sampling():
    kd, reason = load_k_diffusion()
    if kd is None:
        pytest.skip(reason)
    return kd


@pytest.mark.parametrize("field_cls", [VEField, VPField, LinearField,
                                       lambda: PFGMPPField(D=128)],
                         ids=["ve", "vp", "linear", "pfgmpp"])
def test_sigma_and_time_maps_are_inverse(field_cls):
    field = field_cls()
    kd = KDiffusionDenoiser(ProbabilityFlow.exact(field, DATA), field)
    times = field.default_grid(12)[:-1]
    if float(field.a(times[:1])[0]) == 0:
        times = times[1:]
    sig = kd.sigmas(times)
    assert bool(torch.all(sig[1:] < sig[:-1]))
    torch.testing.assert_close(kd.t_of_sigma(sig), times, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("field_cls", [VEField, VPField, LinearField], ids=["ve", "vp", "linear"])
def test_k_diffusion_euler_on_our_model_is_our_first_order_step(field_cls):
    """k-diffusion's ``sample_euler`` through :class:`KDiffusionDenoiser` equals iPNDM of order 1
    (Euler in σ on z = x/a) on the same grid, and calls the model once per step."""
    kd_sampling = k_sampling()
    field = field_cls()
    flow = ProbabilityFlow.exact(field, DATA)
    kd = KDiffusionDenoiser(flow, field)
    times = field.default_grid(8)
    if float(field.a(times[:1])[0]) == 0:  # rectified flow: start one grid point later
        times = times[1:]
    x = field.sample_prior(16, (2,), generator=torch.Generator().manual_seed(0), dtype=F64)
    x = x * float(field.a(times[:1])[0]) + 0.0
    ours = IPNDM(steps=len(times) - 1, order=1, final_step=True).solve(flow, x, times)
    z = kd_sampling.sample_euler(kd, kd.to_k(x, times[0]), kd.sigmas(times), disable=True)
    torch.testing.assert_close(kd.from_k(z, 0.0), ours.x, rtol=1e-9, atol=1e-9)
    assert kd.calls == len(times) - 1


def test_k_diffusion_denoiser_as_our_flow_round_trip():
    """VP → k-diffusion denoiser → our flow (VE in σ): iPNDM and UniPC in σ give the same samples
    on the corresponding grids, since both run on z = x/a, σ = s/a (a(0) = 1 for VP)."""
    field = VPField()
    flow = ProbabilityFlow.exact(field, DATA)
    kd = KDiffusionDenoiser(flow, field)
    kflow = KDiffusionFlow(kd, sigma_min=kd.sigma_min, sigma_max=kd.sigma_max)
    times = field.default_grid(7)
    sig = kd.sigmas(times)
    x = field.sample_prior(16, (2,), generator=torch.Generator().manual_seed(1), dtype=F64)
    for solver in (IPNDM(steps=7), UniPC(steps=7)):
        ours = solver.solve(flow, x, times).x
        via_k = solver.solve(kflow, kd.to_k(x, times[0]), sig).x
        torch.testing.assert_close(via_k, ours, rtol=1e-8, atol=1e-8)
    grid = IPNDM(steps=5).time_grid(kflow)  # a flow with a default grid, like a field
    assert float(grid[0]) == pytest.approx(kd.sigma_max) and float(grid[-1]) == 0


def test_non_affine_field_has_no_k_diffusion_form():
    field = RadialGeneralField()
    with pytest.raises(ValueError, match="not affine"):
        KDiffusionDenoiser(ProbabilityFlow.exact(field, DATA), field)
    with pytest.raises(ValueError, match="sigma_min"):
        KDiffusionFlow(lambda z, s: z, sigma_min=1.0, sigma_max=0.5)


def test_generative_ode_as_k_diffusion():
    """``GenerativeODE.as_k_diffusion()`` on a real module (the exact field of a toy data set,
    built from the sample config) is its denoiser at x = a z, t(σ)."""
    from tests.conftest import compose_config
    from unified_ode.app.build import build_module

    cfg = compose_config("sample", ["network=exact", "physics=vp", "dataset.n_train=64"])
    module, _ = build_module(cfg)
    kd = module.as_k_diffusion()
    t = torch.tensor(0.3, dtype=torch.float64)
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    sigma = kd.sigmas(t).to(torch.float32)
    a = float(module.field.a(t))
    want = module.flow().denoiser(a * z, t.to(torch.float32))
    torch.testing.assert_close(kd(z, sigma.expand(5)), want, rtol=1e-4, atol=1e-5)
