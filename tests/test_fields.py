"""Exact checks of the built-in fields pfgmpp, vp, linear, radial and radial_general (and the
limits that tie them to poisson and ve): kernels against their log-densities, priors, closed
forms, exact-field transport, and that each objective trains."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from unified_ode.errors import UserError
from unified_ode.networks import MLP
from unified_ode.networks.precond import Preconditioned
from unified_ode.objectives import DenoiserObjective, VelocityObjective
from unified_ode.parametrisation import Denoiser, ProbabilityFlow, Velocity
from unified_ode.physics import (
    ExactPosterior,
    LinearField,
    PFGMPPField,
    PoissonField,
    RadialGeneralField,
    RadialProfileField,
    VEField,
    VPField,
)
from unified_ode.physics.radial_general import mixture_log_survival
from unified_ode.physics.validator import kernel_radius_cdf, kernel_radius_ks
from unified_ode.solvers import Heun

N_KS = 8000
KS_CRIT = 1.95 / math.sqrt(N_KS)  # 99.9% two-sided KS critical value


def user_mixture_psi(r, t):
    """A user ψ_t(r) (importable as tests.test_fields:user_mixture_psi): the built-in mixture
    written as a plain CDF, without the tail-exact log-survival."""
    w = 1.0 / (1.0 + t)
    return w * torch.tanh(r / t) + (1 - w) * (-torch.expm1(-r / t))


ISOTROPIC = {
    "pfgmpp_D8": lambda: PFGMPPField(D=8),
    "pfgmpp_D128": lambda: PFGMPPField(D=128),
    "vp": VPField,
    "linear_gaussian": LinearField,
    "radial_tanh": RadialProfileField,
    "radial_exp": lambda: RadialProfileField(profile="exp"),
    "radial_user": lambda: RadialProfileField(profile="torch:tanh"),
    "radial_general": RadialGeneralField,
}


@pytest.mark.parametrize("name", sorted(ISOTROPIC))
@pytest.mark.parametrize("d", [2, 3, 8])
def test_kernel_sampler_matches_log_density(name, d):
    """Radii sampled by the kernel sampler against the CDF integrated from the kernel
    log-density (KS, n = 8000, 99.9% critical value); the integral is the flux, 1."""
    field = ISOTROPIC[name]()
    for t in (0.05, 0.5, min(20.0, 0.99 * field.t_max)):
        res = kernel_radius_ks(field, t, d, n=N_KS, seed=d)
        assert abs(res["flux"] - 1.0) < 1e-5, (t, res)
        assert res["ks"] < KS_CRIT, (t, res)


@pytest.mark.parametrize("field", [VPField(), LinearField()], ids=["vp", "linear"])
def test_affine_gaussian_kernels_in_closed_form(field):
    """vp and linear(gaussian): p_t(x|y) = N(x; a y, s² I), and samples have that mean/spread."""
    g = torch.Generator().manual_seed(0)
    y = torch.randn(6, 3, dtype=torch.float64, generator=g)
    t = torch.tensor([0.01, 0.1, 0.3, 0.5, 0.8, 0.999], dtype=torch.float64)
    x = torch.randn(6, 3, dtype=torch.float64, generator=g)
    a, s = field.a(t)[:, None], field.s(t)[:, None]
    ref = torch.distributions.Normal(a * y, s).log_prob(x).sum(1)
    torch.testing.assert_close(field.kernel_log_prob(x, y, t), ref)
    torch.testing.assert_close(field.pairwise_kernel_log_prob(x, y, t).diagonal(), ref)
    yy = y[3:4].expand(20000, 3)
    xs = field.sample_kernel(yy, torch.full((20000,), 0.5, dtype=torch.float64), generator=g)
    eps = (xs - a[3] * yy) / s[3]
    assert eps.mean(0).abs().max() < 0.04 and (eps.std(0) - 1).abs().max() < 0.03


def test_uniform_cube_kernel_sampler_and_density_agree():
    """linear(uniform): (x − a y)/s is uniform on [−h, h]^d per coordinate (KS on every
    coordinate), the log-density is −d log(2 h s) inside and −inf outside, and it integrates to
    one (midpoint rule on a grid over the cube, exact for a piecewise-constant density)."""
    field = LinearField(prior="uniform")
    h = field.noise.half_width
    d, t = 3, 0.4
    g = torch.Generator().manual_seed(0)
    y = torch.randn(1, d, dtype=torch.float64, generator=g).expand(N_KS, d)
    tt = torch.full((N_KS,), t, dtype=torch.float64)
    x = field.sample_kernel(y, tt, generator=g)
    eps = (x - (1 - t) * y) / t
    for k in range(d):
        assert stats.kstest(eps[:, k].numpy(), stats.uniform(-h, 2 * h).cdf).statistic < KS_CRIT
    assert eps.abs().max() <= h
    logp = field.kernel_log_prob(x, y, tt)
    torch.testing.assert_close(logp, torch.full_like(logp, -d * math.log(2 * h * t)))
    outside = x + torch.tensor([0.0, 0.0, 2 * h * t], dtype=torch.float64)
    assert torch.all(field.kernel_log_prob(outside, y, tt) == -math.inf)
    # flux in d = 2 on a 400×400 grid over a box that contains the cube
    d2, m = 2, 400
    y2 = torch.tensor([[0.3, -0.7]], dtype=torch.float64)
    lo = (1 - t) * y2 - 1.3 * h * t
    cell = 2.6 * h * t / m
    mid = (torch.arange(m, dtype=torch.float64) + 0.5) * cell
    grid = torch.cartesian_prod(mid, mid) + lo
    dens = field.kernel_log_prob(grid, y2.expand(m * m, d2),
                                 torch.full((m * m,), t, dtype=torch.float64)).exp()
    assert abs(float(dens.sum() * cell**2) - 1.0) < 1e-2
    # the prior is the cube itself, exactly
    prior = field.sample_prior(1000, (d,), generator=g, dtype=torch.float64)
    assert prior.abs().max() <= h
    torch.testing.assert_close(field.prior_log_prob(prior),
                               torch.full((1000,), -d * math.log(2 * h), dtype=torch.float64))


def test_uniform_pairwise_is_exact_on_the_support():
    """The exact field's pairwise log-density equals the kernel's wherever it is finite; off
    the support its exp is exactly 0 (the floor only orders the cubes by distance)."""
    field = LinearField(prior="uniform")
    g = torch.Generator().manual_seed(0)
    y = torch.randn(7, 2, dtype=torch.float64, generator=g)
    x = 2 * torch.randn(50, 2, dtype=torch.float64, generator=g)
    t = torch.full((50,), 0.3, dtype=torch.float64)
    pw = field.pairwise_kernel_log_prob(x, y, t)
    ref = torch.stack([field.kernel_log_prob(x, y[j].expand_as(x), t) for j in range(7)], 1)
    inside = torch.isfinite(ref)
    assert inside.any() and (~inside).any()
    torch.testing.assert_close(pw[inside], ref[inside])
    assert torch.all(pw[~inside].exp() == 0) and torch.all(pw[~inside] < ref[inside].min() - 1e3)


@pytest.mark.parametrize("D", [1.0, 8.0, 128.0])
def test_pfgm_prior_radius_is_beta_prime(D):
    """PFGM/PFGM++ prior: R² / (R² + D t_max²) ~ Beta(d/2, D/2) (KS, n = 8000)."""
    field = PoissonField() if D == 1.0 else PFGMPPField(D=D)
    d = 5
    x = field.sample_prior(N_KS, (d,), generator=torch.Generator().manual_seed(3),
                           dtype=torch.float64)
    r2 = x.pow(2).sum(1)
    b = r2 / (r2 + D * field.t_max**2)
    assert stats.kstest(b.numpy(), stats.beta(d / 2, D / 2).cdf).statistic < KS_CRIT


def test_pfgmpp_with_D1_is_poisson():
    """Same kernel and prior log-densities, same pairwise posteriors, same sampler."""
    pp, po = PFGMPPField(D=1), PoissonField()
    g = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(40, 4, dtype=torch.float64, generator=g)
    y = torch.randn(40, 4, dtype=torch.float64, generator=g)
    t = torch.rand(40, dtype=torch.float64, generator=g) * 5 + 0.01
    torch.testing.assert_close(pp.kernel_log_prob(x, y, t), po.kernel_log_prob(x, y, t))
    torch.testing.assert_close(pp.pairwise_kernel_log_prob(x, y, t),
                               po.pairwise_kernel_log_prob(x, y, t))
    torch.testing.assert_close(pp.prior_log_prob(x), po.prior_log_prob(x))
    a = pp.sample_kernel(y, t, generator=torch.Generator().manual_seed(5))
    b = po.sample_kernel(y, t, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    assert PFGMPPField(D=1, clip_radius=(1, 10)).sample_prior(
        500, (2,), generator=torch.Generator().manual_seed(0)).norm(dim=1).max() <= 10 + 1e-4


def test_pfgmpp_approaches_ve_as_D_grows():
    """The sup distance between the radius CDFs of pfgmpp(D) and ve (both integrated from the
    kernel log-densities, d = 8, t = 1) shrinks monotonically over D = 8, 128, 2048, 1e5, and at
    D = 1e5 the pfgmpp sampler passes a KS test against the ve radius law."""
    d, t = 8, 1.0
    r, ve_cdf = kernel_radius_cdf(VEField(), t, d)
    gaps = []
    for D in (8, 128, 2048, 1e5):
        _, cdf = kernel_radius_cdf(PFGMPPField(D=D), t, d)
        gaps.append(float((cdf - ve_cdf).abs().max()))
    assert all(b < a for a, b in zip(gaps, gaps[1:])), gaps
    assert gaps[0] > 0.02 and gaps[-1] < 1e-4, gaps
    x = PFGMPPField(D=1e5).sample_kernel(torch.zeros(N_KS, d, dtype=torch.float64),
                                         torch.ones(N_KS, dtype=torch.float64),
                                         generator=torch.Generator().manual_seed(1))
    assert stats.kstest(x.norm(dim=1).numpy(), stats.chi(d).cdf).statistic < KS_CRIT


def test_vp_schedule_closed_forms():
    field = VPField()
    t = torch.linspace(1e-4, 1.0, 101, dtype=torch.float64)
    torch.testing.assert_close(field.a(t) ** 2 + field.s(t) ** 2, torch.ones_like(t))
    torch.testing.assert_close(field.t_from_sigma(field.sigma(t)), t)
    torch.testing.assert_close(field.sigma(t), field.s(t) / field.a(t))
    h = 1e-6
    for f, df in ((field.a, field.da), (field.s, field.ds)):
        torch.testing.assert_close(df(t[1:-1]), (f(t[1:-1] + h) - f(t[1:-1] - h)) / (2 * h),
                                   rtol=1e-6, atol=1e-6)
    # beta(t) linear from 0.1 to 20, a(1) = exp(-(0.1 + 20)/4)
    assert abs(float(field.a(torch.tensor(1.0, dtype=torch.float64)))
               - math.exp(-20.1 / 4)) < 1e-12
    grid = field.default_grid(10)
    assert grid[0] == 1.0 and grid[-2] == field.t_min and grid[-1] == 0
    assert torch.all(grid[1:] < grid[:-1])
    x = field.sample_prior(20000, (2,), generator=torch.Generator().manual_seed(0))
    assert (x.std() - 1).abs() < 0.02
    torch.testing.assert_close(field.prior_log_prob(x.double()),
                               torch.distributions.Normal(0, 1).log_prob(x.double()).sum(1))


def test_linear_field_basics():
    field = LinearField()
    assert field.train_time_law is None and field.t_max == 1.0
    with pytest.raises(ValueError, match="t_max must be 1"):
        LinearField(t_max=2.0)
    with pytest.raises(ValueError, match="gaussian"):
        LinearField(prior="cauchy")
    g = torch.Generator().manual_seed(0)
    y = torch.randn(100, 3, dtype=torch.float64, generator=g)
    t = torch.rand(100, dtype=torch.float64, generator=g).clamp_min(0.01)
    eps = torch.randn(100, 3, dtype=torch.float64, generator=g)
    x = (1 - t[:, None]) * y + t[:, None] * eps
    torch.testing.assert_close(field.conditional_velocity(x, y, t), eps - y)
    # at t = 1 the preconditioning is finite (a = 0) and the kernel no longer sees y
    one = torch.ones(100, dtype=torch.float64)
    assert all(torch.isfinite(c).all() for c in field.denoiser_coefficients(x, one, 1.0))
    torch.testing.assert_close(field.kernel_log_prob(x, y, one),
                               field.kernel_log_prob(x, torch.zeros_like(y), one))
    # train_time_law: null follows the objective (velocity: uniform; denoiser: lognormal)
    ts = LinearField().sample_training_time(10000, generator=g,
                                            law_hint=VelocityObjective.time_law_hint)
    assert stats.kstest(ts.numpy(), "uniform").statistic < 0.02
    ts = LinearField().sample_training_time(10000, generator=g,
                                            law_hint=DenoiserObjective.time_law_hint)
    assert stats.kstest(ts.numpy(), "uniform").statistic > 0.1
    ts = LinearField(train_time_law="uniform").sample_training_time(
        10000, generator=g, law_hint=DenoiserObjective.time_law_hint)
    assert stats.kstest(ts.numpy(), "uniform").statistic < 0.02


def test_radial_user_profile_and_bad_profiles():
    """A user CDF named by import path gives the built-in tanh field (autograd derivative,
    bisection inverse); non-CDFs and bad paths are refused with a UserError."""
    user, builtin = RadialProfileField(profile="torch:tanh"), RadialProfileField()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 4, dtype=torch.float64, generator=g)
    y = torch.randn(30, 4, dtype=torch.float64, generator=g)
    t = torch.full((30,), 0.7, dtype=torch.float64)
    torch.testing.assert_close(user.kernel_log_prob(x, y, t), builtin.kernel_log_prob(x, y, t))
    u = torch.rand(100, dtype=torch.float64, generator=g)
    torch.testing.assert_close(user.profile.inverse(u), torch.atanh(u))
    for bad, msg in (("torch:sigmoid", "F\\(0\\)"), ("nowhere.mod:fn", "cannot import"),
                     ("torch:no_such_fn", "no callable"), ("gauss", "built-in")):
        with pytest.raises(UserError, match=msg):
            RadialProfileField(profile=bad)


def test_radial_general_velocity_is_not_affine_and_conserves_mass():
    """The mixture's velocity matches its closed form, differs from (x − y)/t, and solves the
    continuity equation ∂_t ϕ + ∇·(ϕ v) = 0 (central differences, d = 3)."""
    field = RadialGeneralField()
    g = torch.Generator().manual_seed(0)
    y = torch.randn(8, 3, dtype=torch.float64, generator=g)
    x = y + torch.randn(8, 3, dtype=torch.float64, generator=g)
    t = torch.full((8,), 0.8, dtype=torch.float64)
    v = field.conditional_velocity(x, y, t)
    r = (x - y).norm(dim=1)
    s = r / t
    w = 1 / (1 + t)
    p = w / torch.cosh(s) ** 2 + (1 - w) * torch.exp(-s)
    speed = r / t + t * (torch.tanh(s) + torch.expm1(-s)) / ((1 + t) ** 2 * p)
    torch.testing.assert_close(v, speed[:, None] * (x - y) / r[:, None])
    assert (v - (x - y) / t[:, None]).norm(dim=1).min() > 1e-2

    def flux_density(xx, tt):  # ϕ_t(x|y) and ϕ v
        phi = field.kernel_log_prob(xx, y, tt).exp()
        return phi, phi[:, None] * field.conditional_velocity(xx, y, tt)

    h = 1e-5
    phi_p, _ = flux_density(x, t + h)
    phi_m, _ = flux_density(x, t - h)
    div = torch.zeros(8, dtype=torch.float64)
    for k in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[k] = h
        div += (flux_density(x + e, t)[1][:, k] - flux_density(x - e, t)[1][:, k]) / (2 * h)
    residual = (phi_p - phi_m) / (2 * h) + div
    assert (residual.abs() / div.abs().clamp_min(1e-3)).max() < 1e-5, residual


def test_radial_general_user_psi_matches_builtin():
    user = RadialGeneralField(psi="tests.test_fields:user_mixture_psi")
    builtin = RadialGeneralField()
    g = torch.Generator().manual_seed(0)
    y = torch.randn(20, 2, dtype=torch.float64, generator=g)
    x = y + torch.randn(20, 2, dtype=torch.float64, generator=g)
    t = torch.rand(20, dtype=torch.float64, generator=g) + 0.2
    torch.testing.assert_close(user.kernel_log_prob(x, y, t), builtin.kernel_log_prob(x, y, t))
    torch.testing.assert_close(user.conditional_velocity(x, y, t),
                               builtin.conditional_velocity(x, y, t))
    r = torch.logspace(-3, 2, 50, dtype=torch.float64)
    torch.testing.assert_close(builtin.psi(r, torch.ones_like(r)),
                               user_mixture_psi(r, torch.ones_like(r)))
    assert mixture_log_survival(torch.tensor([1e4]), torch.tensor([1.0])) < -9e3  # tail-exact
    assert not builtin.has_denoiser_form
    with pytest.raises(UserError, match="objective=denoiser cannot train physics=radial_general"
                                        ".*Valid choices for this field: objective=velocity"):
        DenoiserObjective().bind(builtin)
    with pytest.raises(UserError, match="radial CDF"):
        RadialGeneralField(psi="tests.test_fields:bad_psi")


def bad_psi(r, t):
    """Not a CDF: ψ_t(0) = 0.5."""
    return 0.5 + 0.5 * torch.tanh(r / t)


LANDING = [  # (id, field factory, parametrisation, tolerance on the distance to the data)
    ("poisson", lambda: PoissonField(t_min=1e-5), None, 1e-3),
    ("ve", VEField, None, 1e-3),
    ("pfgmpp_D8", lambda: PFGMPPField(D=8), None, 1e-3),
    ("pfgmpp_D128", PFGMPPField, None, 1e-3),
    ("vp_tmin1e-5", lambda: VPField(t_min=1e-5), None, 1e-3),
    # σ(t_min = 1e-3) = 0.0105: the old last step (one Euler step) left half of it (tol 5e-2);
    # the exact last step a(0)·D(x, t_min) lands
    ("vp_default", VPField, None, 1e-3),
    ("linear_gaussian", LinearField, Velocity, 1e-3),
    ("linear_gaussian_denoiser", LinearField, Denoiser, 1e-3),
    ("linear_uniform", lambda: LinearField(prior="uniform"), Velocity, 1e-3),
    ("radial_tanh", RadialProfileField, None, 1e-3),
    ("radial_exp", lambda: RadialProfileField(profile="exp"), None, 1e-3),
    ("radial_general", RadialGeneralField, Velocity, 1e-3),
]


@pytest.mark.parametrize(("name", "factory", "param", "tol"), LANDING,
                         ids=[c[0] for c in LANDING])
@pytest.mark.parametrize("d", [2, 16])
def test_exact_field_lands_on_data(name, factory, param, tol, d):
    """The exact field of 32 points, integrated from the prior with Heun (40 steps, 79 NFE,
    the field's default grid), ends within ``tol`` of a data point for all 200 samples, and
    reaches at least 28 of the 32 points."""
    field = factory()
    data = torch.randn(32, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    param = (param or Denoiser)(field)
    flow = ProbabilityFlow(param, ExactPosterior(field, data, parametrisation=param))
    x_T = field.sample_prior(200, (d,), generator=torch.Generator().manual_seed(1),
                             dtype=torch.float64)
    result = Heun(steps=40).solve(flow, x_T, field.default_grid(40))
    dist = torch.cdist(result.x, data)
    assert result.nfe == 79
    assert dist.min(1).values.max() < tol, dist.min(1).values.max()
    assert len(torch.unique(dist.argmin(1))) >= 28


class WithCoefficients(torch.nn.Module):
    """A model that returns the field's preconditioning coefficients with its prediction, as
    :class:`Preconditioned` does (the weighted denoiser loss asks for them)."""

    def __init__(self, model, field, sigma_data):
        super().__init__()
        self.model, self.field, self.sigma_data = model, field, sigma_data

    def forward(self, x, t, return_coefficients=False):
        out = self.model(x, t)
        if not return_coefficients:
            return out
        return out, self.field.denoiser_coefficients(x, t, self.sigma_data)


def _train(field, objective, steps=300, seed=0):
    """Train a small MLP for ``steps`` Adam steps on 8 Gaussians (4096 points); returns the
    held-out loss (fixed noise and times) before and after, and that of the exact field of the
    4096 points (the floor any network trained on them approaches)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    angles = torch.randint(0, 8, (4096,), generator=g) * (2 * math.pi / 8)
    data = torch.stack([angles.cos(), angles.sin()], 1) * 1.4
    data = data + 0.1 * torch.randn(4096, 2, generator=g)
    param = objective.bind(field)
    model = Preconditioned(MLP([2], width=64, depth=2, time_embed_dim=32), param, sigma_data=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def held_out_loss(m):
        with torch.no_grad():
            return float(objective(m, field, data[:1024],
                                   generator=torch.Generator().manual_seed(99)))

    before = held_out_loss(model)
    for _ in range(steps):
        idx = torch.randint(0, 4096, (256,), generator=g)
        loss = objective(model, field, data[idx], generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    floor = held_out_loss(WithCoefficients(
        ExactPosterior(field, data, dtype=torch.float32, parametrisation=param), field, 1.0))
    return before, held_out_loss(model), floor


@pytest.mark.parametrize(("field", "objective"), [
    (PFGMPPField(D=128), DenoiserObjective()),
    (VPField(), DenoiserObjective()),
    (LinearField(), VelocityObjective()),
    (RadialGeneralField(), VelocityObjective()),
], ids=["pfgmpp-denoiser", "vp-denoiser", "linear-velocity", "radial_general-velocity"])
def test_objective_reduces_loss(field, objective):
    """300 Adam steps of a small MLP on 8 Gaussians close at least half of the gap between the
    initial held-out loss and the exact field's (same noise and times throughout)."""
    before, after, floor = _train(field, objective)
    assert floor < after < before, (before, after, floor)
    assert after - floor < 0.5 * (before - floor), (before, after, floor)


@pytest.mark.parametrize("factory", [PFGMPPField, VPField, LinearField, RadialProfileField,
                                     lambda: LinearField(prior="uniform")],
                         ids=["pfgmpp", "vp", "linear", "radial", "linear_uniform"])
def test_affine_velocity_form_is_the_denoiser_form_through_the_drift(factory):
    """For an affine field the preconditioned velocity model, v_skip x + v_out F, is exactly the
    drift of the preconditioned denoiser c_skip x~ + c_out F built on the same network."""
    field = factory()
    net = MLP([3], width=32, depth=1, time_embed_dim=16).double()
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(64, 3, dtype=torch.float64, generator=g)
    t = field.t_min + (field.t_max - field.t_min) * torch.rand(64, dtype=torch.float64,
                                                              generator=g)
    den = Denoiser(field)
    v = Preconditioned(net, Velocity(field), sigma_data=0.7)(x, t)
    d = Preconditioned(net, den, sigma_data=0.7)(x, t)
    torch.testing.assert_close(v, den.drift(x, t, d))
