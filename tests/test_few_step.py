"""Few-step solvers (issue 12): iPNDM and UniPC coefficients against hand-computed values,
measured convergence orders on exact fields, exact NFE counts (analytic first step included)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.test_solvers import SigmaVP, exact_problem, measured_order, rms
from unified_ode.parametrisation import ProbabilityFlow
from unified_ode.physics import LinearField, RadialGeneralField, VEField
from unified_ode.solvers import IPNDM, UniPC
from unified_ode.solvers.ipndm import IPNDM_COEFFICIENTS
from unified_ode.solvers.pc import exp_weights
from unified_ode.solvers.unipc import phi_series, unipc_rhos, unipc_weights
from unified_ode.timegrid import make_grid

F64 = torch.float64
#: four centred training points (mean exactly 0)
DATA = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=F64) * 1.5 - 0.75


# --- iPNDM ---------------------------------------------------------------------------------------
def test_ipndm_coefficients_are_adams_bashforth_for_equal_steps():
    """The published values, and Σ_j c_j p(−j) = ∫_0^1 p for every polynomial of degree < k
    (slopes at u = 0, −1, −2, −3 in units of the step)."""
    assert IPNDM_COEFFICIENTS[2] == (1.5, -0.5)
    assert IPNDM_COEFFICIENTS[3] == (23 / 12, -16 / 12, 5 / 12)
    assert IPNDM_COEFFICIENTS[4] == (55 / 24, -59 / 24, 37 / 24, -9 / 24)
    for k, c in IPNDM_COEFFICIENTS.items():
        for m in range(k):
            got = sum(cj * (-j) ** m for j, cj in enumerate(c))
            assert abs(got - 1 / (m + 1)) < 1e-14, (k, m)


def test_ipndm_steps_by_hand_on_a_drift_linear_in_t():
    """dx/dt = t on the grid 2, 1.5, 1 (drift form): Euler, then AB2 — by hand
    x₁ = x₀ − 0.5·2 = x₀ − 1, x₂ = x₁ − 0.5·(3·1.5 − 2)/2 = x₁ − 0.625 (= ∫_{1.5}^{1} t dt)."""
    x0 = torch.zeros(3, 1, dtype=F64)
    grid = torch.tensor([2.0, 1.5, 1.0], dtype=F64)
    res = IPNDM(steps=2, variable="t", final_step=False).solve(
        lambda x, t: torch.ones_like(x) * t, x0, grid)
    torch.testing.assert_close(res.x, torch.full_like(x0, -1.625))
    # on an uneven grid the fixed coefficients' second step is not exact for a linear drift,
    # the variable-step one is: x₂ = −1 + ∫_{1.5}^{0.5} t dt = −2
    uneven = torch.tensor([2.0, 1.5, 0.5], dtype=F64)
    fixed = IPNDM(steps=2, variable="t", final_step=False).solve(
        lambda x, t: torch.ones_like(x) * t, x0, uneven).x
    var = IPNDM(steps=2, variable="t", variable_step=True, final_step=False).solve(
        lambda x, t: torch.ones_like(x) * t, x0, uneven).x
    assert abs(float(var[0, 0]) + 2.0) < 1e-12
    # by hand: −1 + (−1)·(3·1.5 − 2)/2 = −2.25
    assert abs(float(fixed[0, 0]) + 2.25) < 1e-12


@pytest.mark.parametrize("field_cls", [VEField, SigmaVP], ids=["ve", "sigma_vp"])
def test_ipndm_convergence_order(field_cls):
    """Order 4 AB after a 1-2-3 warm start: the Euler first step limits the asymptotic order
    to 2, but over N = 8…128 the measured order is ≈ 3 (2.9–3.0) and iPNDM's errors are below
    order-2 iPNDM's at every N."""
    o4, e4 = measured_order(field_cls, lambda n: IPNDM(steps=n))
    _, e2 = measured_order(field_cls, lambda n: IPNDM(steps=n, order=2))
    assert 2.6 < o4 < 3.5, (o4, e4)
    assert all(a < b for a, b in zip(e4, e2)), (e4, e2)


def test_ipndm_sigma_form_differs_from_t_form_where_a_is_not_one():
    """On VE (σ = t) the σ form is the t form; on a field with a ≠ 1 it is not."""
    for field, same in ((VEField(), True), (SigmaVP(), False)):
        flow, x0, _ = exact_problem(field)
        grid = field.default_grid(6)
        a = IPNDM(steps=6).solve(flow, x0, grid).x
        b = IPNDM(steps=6, variable="t").solve(flow, x0, grid).x
        assert (rms(a, b) < 1e-12) == same, rms(a, b)


@pytest.mark.parametrize("steps", [1, 2, 5])
@pytest.mark.parametrize("final_step", [True, False])
def test_ipndm_nfe_with_and_without_analytic_first_step(steps, final_step):
    field = VEField()
    flow, x0, _ = exact_problem(field)
    for afs in (False, True):
        solver = IPNDM(steps=steps, afs=afs, final_step=final_step)
        res = solver.solve(flow, x0, solver.time_grid(field))
        assert res.nfe == solver.nfe_for_steps(steps) == len(res.eval_times)
        saved = afs and (steps > 1 or not final_step)
        assert res.nfe == steps - saved
        if saved:  # the prior's closed form replaced the call at t_max
            assert bool((res.eval_times < field.t_max).all())


def test_analytic_first_step_is_exact_for_rectified_flow_with_centred_data():
    """At t = 1 the linear field's x is independent of y: E[y | x, 1] is the data mean, here
    exactly 0, so AFS changes nothing but the NFE."""
    field = LinearField()
    flow = ProbabilityFlow.exact(field, DATA)
    x_T = field.sample_prior(16, (2,), generator=torch.Generator().manual_seed(0), dtype=F64)
    grid = field.default_grid(8)
    plain = IPNDM(steps=8).solve(flow, x_T, grid)
    afs = IPNDM(steps=8, afs=True).solve(flow, x_T, grid)
    assert afs.nfe == plain.nfe - 1
    assert rms(afs.x, plain.x) < 1e-12


def test_analytic_first_step_with_the_data_mean_is_exact_for_non_centred_data():
    """Data not centred (mean (3, −2)): at t = 1 E[y | x, 1] is that mean, so AFS with
    ``afs_mean`` = the data's mean (a tensor of one sample's shape) changes nothing but the
    NFE, while the default μ = 0 carries the whole mean into the samples."""
    data = DATA + torch.tensor([3.0, -2.0], dtype=F64)
    field = LinearField()
    flow = ProbabilityFlow.exact(field, data)
    x_T = field.sample_prior(16, (2,), generator=torch.Generator().manual_seed(0), dtype=F64)
    grid = field.default_grid(8)
    plain = IPNDM(steps=8).solve(flow, x_T, grid)
    afs = IPNDM(steps=8, afs=True, afs_mean=data.mean(0)).solve(flow, x_T, grid)
    assert afs.nfe == plain.nfe - 1
    assert rms(afs.x, plain.x) < 1e-12
    centred_guess = IPNDM(steps=8, afs=True).solve(flow, x_T, grid).x
    assert rms(centred_guess, plain.x) > 0.1
    with pytest.raises(ValueError, match="afs_mean has shape"):
        IPNDM(steps=8, afs=True, afs_mean=torch.zeros(3)).solve(flow, x_T, grid)
    with pytest.raises(ValueError, match="afs_mean must be finite"):
        IPNDM(afs=True, afs_mean=float("nan"))


def test_analytic_first_step_error_is_small_for_a_far_prior():
    """VE with σ_max = 80: the guess D = 0 is off by O(1/σ_max); the samples move by < 1 %
    of the data scale."""
    field = VEField()
    flow = ProbabilityFlow.exact(field, DATA)
    x_T = field.sample_prior(32, (2,), generator=torch.Generator().manual_seed(1), dtype=F64)
    grid = field.default_grid(10)
    plain = IPNDM(steps=10).solve(flow, x_T, grid).x
    afs = IPNDM(steps=10, afs=True, afs_sigma_data=0.75).solve(flow, x_T, grid).x
    assert rms(afs, plain) < 1e-2, rms(afs, plain)


def test_ipndm_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="order"):
        IPNDM(order=5)
    with pytest.raises(ValueError, match="afs"):
        IPNDM(afs=True, variable="t")
    field = RadialGeneralField()
    flow = ProbabilityFlow.exact(field, DATA)
    x = field.sample_prior(4, (2,), dtype=F64)
    with pytest.raises(ValueError, match="affine"):
        IPNDM(steps=4, afs=True).solve(flow, x, field.default_grid(4))


# --- UniPC ---------------------------------------------------------------------------------------
def test_phi_series_matches_its_definition_on_both_branches():
    """g_j = Σ_{n>j} (−h)^{n−j}/n!: g₁ = (1 − e^{−h} − h)/h, g₂ = g₁/(−h) − 1/2, on both sides
    of the series/recursion switch at h = 1."""
    for h in (0.05, 0.7, 1.3, 4.0):
        g1 = (1 - math.exp(-h) - h) / h
        g2 = g1 / (-h) - 0.5
        g3 = g2 / (-h) - 1 / 6
        got = phi_series(h, 3)
        assert abs(got[0] - g1) < 1e-12 and abs(got[1] - g2) < 1e-11
        assert abs(got[2] - g3) < 1e-9 * max(1, 1 / h**2)


def test_unipc_coefficients_by_hand():
    """h = 1, one past node at r = −1 (equal steps in λ); e = e^{−1}."""
    e = math.exp(-1.0)
    # predictor order 1: DDIM
    assert unipc_weights([], 1.0, "bh2", False) == pytest.approx([1 - e])
    # predictor order 2: ρ = 1/2 with B = e − 1 (bh2): w₋₁ = −B/2/r = (e − 1)/2
    assert unipc_weights([-1.0], 1.0, "bh2", False) == pytest.approx(
        [(e - 1) / 2, (1 - e) - (e - 1) / 2])
    # bh1: B = −h = −1: w₋₁ = −1/2
    assert unipc_weights([-1.0], 1.0, "bh1", False) == pytest.approx([-0.5, (1 - e) + 0.5])
    # corrector with no past node: ρ = 1/2 on the new node at r = 1, w_new = −B/2
    assert unipc_weights([], 1.0, "bh2", True) == pytest.approx([(1 - e) - (1 - e) / 2,
                                                                  (1 - e) / 2])
    # corrector UniC-2: ρ solves [[1, 1], [−1, 1]] ρ = [g₁, 2 g₂]/B with g₁ = (1 − e − 1)/1
    # = −e and g₂ = g₁/(−1) − 1/2 = e − 1/2 (h = 1)
    g1 = -e
    g2 = e - 0.5
    for variant, B in (("bh1", -1.0), ("bh2", e - 1)):
        b1, b2 = g1 / B, 2 * g2 / B
        rho2 = (b1 + b2) / 2
        rho1 = b1 - rho2
        assert unipc_rhos([-1.0], 1.0, variant, True) == pytest.approx([rho1, rho2])


def test_unipc_solved_systems_are_the_exact_exponential_weights():
    """Where UniPC solves its order conditions (UniC-p, p ≥ 2; UniP-p, p ≥ 3) B(h) cancels and
    the weights are the unique ones exact for polynomials in λ — the exponential Adams weights
    of solvers/pc.py, derived independently."""
    for h in (0.3, 1.0, 2.5):
        for rks in ([-0.8], [-0.8, -2.1]):
            for variant in ("bh1", "bh2"):
                uc = unipc_weights(rks, h, variant, True)
                ref = exp_weights([r * h for r in rks] + [0.0, h], h)
                assert uc == pytest.approx(ref, rel=1e-10, abs=1e-12)
        up = unipc_weights([-0.8, -2.1], h, "bh1", False)
        assert up == pytest.approx(exp_weights([-0.8 * h, -2.1 * h, 0.0], h), rel=1e-10)
        assert sum(up) == pytest.approx(-math.expm1(-h))


@pytest.mark.parametrize("field_cls", [VEField, SigmaVP], ids=["ve", "sigma_vp"])
@pytest.mark.parametrize("order, lo, hi", [(1, 1.5, 2.3), (2, 2.5, 3.3)])
def test_unipc_corrector_raises_the_order(field_cls, order, lo, hi):
    """UniP-p + UniC is of order p + 1 (measured over N = 8…128), and more accurate than the
    predictor alone at every N, at the same NFE."""
    o, e = measured_order(field_cls, lambda n: UniPC(steps=n, order=order,
                                                     lower_order_final=False))
    _, ep = measured_order(field_cls, lambda n: UniPC(steps=n, order=order, corrector=False,
                                                      lower_order_final=False))
    assert lo < o < hi, (o, e)
    assert all(a < b for a, b in zip(e, ep)), (e, ep)


@pytest.mark.parametrize("steps", [1, 2, 3, 7])
def test_unipc_nfe_is_steps(steps):
    field = SigmaVP()
    flow, x0, _ = exact_problem(field)
    for final_step in (True, False):
        solver = UniPC(steps=steps, final_step=final_step)
        res = solver.solve(flow, x0, solver.time_grid(field))
        assert res.nfe == steps == solver.nfe_for_steps(steps)


def test_unipc_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="variant"):
        UniPC(variant="bh3")
    with pytest.raises(ValueError, match="order"):
        UniPC(order=4)
    field = RadialGeneralField()
    flow = ProbabilityFlow.exact(field, DATA)
    with pytest.raises(ValueError, match="affine"):
        UniPC(steps=4).solve(flow, field.sample_prior(4, (2,), dtype=F64),
                             field.default_grid(4))


def test_make_grid_is_the_default_for_few_step_solvers():
    """Sanity: the new solvers use the field's default grid like every other solver."""
    field = VEField()
    assert torch.equal(IPNDM(steps=5).time_grid(field), field.default_grid(5))
    assert torch.equal(UniPC(steps=5, grid="edm").time_grid(field),
                       make_grid("edm", 5, field.t_min, field.t_max))
