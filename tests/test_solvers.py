"""Solvers on exact fields: convergence orders, exact NFE, trajectories, the solver interface,
configs and ``sample.py solver=dopri5`` printing its measured NFE."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import CONF, run_script
from unified_ode.parametrisation import Denoiser, ProbabilityFlow, Velocity
from unified_ode.physics import ExactPosterior, PoissonField, VEField
from unified_ode.physics.base import AffineField
from unified_ode.physics.noise import GaussianNoise
from unified_ode.solvers import (
    RK4,
    AdamsBashforth,
    Dopri5,
    DPMSolverPP,
    DPMSolverPP2M,
    DPMSolverPP3M,
    Euler,
    ExpPC,
    Heun,
)
from unified_ode.solvers.lms import adams_bashforth_weights
from unified_ode.timegrid import make_grid

F64 = torch.float64


class SigmaVP(AffineField):
    """A VP-type affine field with a != 1 (EDM's VP in sigma units): a = 1/sqrt(1+t²),
    s = t/sqrt(1+t²). Tests that the solvers use a(t), s(t) and nothing VE-specific."""

    name = "sigma_vp"

    def __init__(self, **kwargs):
        super().__init__(noise=GaussianNoise(), t_min=0.01, t_max=10.0, **kwargs)

    def a(self, t):
        return 1 / torch.sqrt(1 + t**2)

    def s(self, t):
        return t / torch.sqrt(1 + t**2)

    def da(self, t):
        return -t / (1 + t**2) ** 1.5

    def ds(self, t):
        return 1 / (1 + t**2) ** 1.5

    def t_from_sigma(self, sigma):
        return sigma


def exact_problem(field, n_data=4, n_query=48, seed=0):
    """(flow, x0, data): the exact field of ``n_data`` Gaussian points in 2-D as a flow (in
    denoiser form), and ``n_query`` start states."""
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(n_data, 2, generator=g, dtype=F64)
    param = Denoiser(field)
    flow = ProbabilityFlow(param, ExactPosterior(field, data, parametrisation=param))
    x0 = 2.0 * torch.randn(n_query, 2, generator=g, dtype=F64)
    return flow, x0, data


def rms(a, b):
    return (a - b).pow(2).mean().sqrt().item()


# --- convergence orders ----------------------------------------------------------------------
# Smooth setting: exact field of 4 points, integrated from t = 2 down to t = 0.5 (the posterior
# is smooth there), on uniform grids of N = 8 … 128 steps; the reference is RK4 with 640 steps
# (error ~1e-11, measured RK4 errors are ≥ 1e-8). The order is the least-squares slope of
# log(error) against log(N).
ORDER_CASES = [  # (solver factory, expected order, tolerance)
    (lambda n: Euler(steps=n), 1.0, 0.15),
    (lambda n: Heun(steps=n), 2.0, 0.3),
    (lambda n: RK4(steps=n), 4.0, 0.4),
    (lambda n: DPMSolverPP2M(steps=n, lower_order_final=False), 2.0, 0.3),
    (lambda n: AdamsBashforth(steps=n, order=2), 2.0, 0.3),
]


@functools.cache
def smooth_problem(field_cls):
    field = field_cls()
    flow, x0, _ = exact_problem(field)
    ref = RK4(steps=640).solve(flow, x0, make_grid("uniform", 640, 0.5, 2.0,
                                                   final_step=False)).x
    return field, flow, x0, ref


def measured_order(field_cls, make_solver, ns=(8, 16, 32, 64, 128)):
    field, flow, x0, ref = smooth_problem(field_cls)
    errs = []
    for n in ns:
        grid = make_grid("uniform", n, 0.5, 2.0, final_step=False)
        errs.append(rms(make_solver(n).solve(flow, x0, grid).x, ref))
    lx = torch.tensor([math.log(n) for n in ns], dtype=F64)
    ly = torch.tensor([math.log(e) for e in errs], dtype=F64)
    slope = ((lx - lx.mean()) * (ly - ly.mean())).sum() / ((lx - lx.mean()) ** 2).sum()
    return -slope.item(), errs


@pytest.mark.parametrize("field_cls", [VEField, SigmaVP], ids=["ve", "sigma_vp"])
@pytest.mark.parametrize("case", range(len(ORDER_CASES)),
                         ids=["euler", "heun", "rk4", "dpmpp2m", "ab2"])
def test_convergence_order(field_cls, case):
    make_solver, expected, tol = ORDER_CASES[case]
    order, errs = measured_order(field_cls, make_solver)
    assert abs(order - expected) < tol, (order, errs)


def test_dpmpp3m_beats_2m_and_converges():
    """3M starts with a first-order step, so its limit order is 2; measured it is ≥ 2.3 over
    N = 8…128 and its errors are below 2M's from N = 16 on."""
    o3, e3 = measured_order(VEField, lambda n: DPMSolverPP3M(steps=n, lower_order_final=False))
    _, e2 = measured_order(VEField, lambda n: DPMSolverPP2M(steps=n, lower_order_final=False))
    assert o3 > 2.3, (o3, e3)
    assert all(a < b for a, b in zip(e3[1:], e2[1:])), (e3, e2)


@pytest.mark.parametrize("order, reference", [
    (2, functools.partial(DPMSolverPP2M, second_order="taylor")), (3, DPMSolverPP3M)])
def test_exppc_without_corrector_is_dpmpp(order, reference):
    """The generic exponential weights reproduce the hand-derived 2M/3M steps (same grid)."""
    field = VEField()
    flow, x0, _ = exact_problem(field)
    for steps in (4, 10, 20):
        grid = field.default_grid(steps)
        a = reference(steps=steps).solve(flow, x0, grid).x
        b = ExpPC(steps=steps, order=order, corrector=False).solve(flow, x0, grid).x
        assert rms(a, b) < 1e-10, (steps, rms(a, b))


def test_exppc_corrector_raises_the_order():
    """The corrector (no extra calls) lifts 2nd-order prediction to 3rd order in the smooth
    setting, and is more accurate than the predictor alone at every N."""
    o_pc, e_pc = measured_order(VEField, lambda n: ExpPC(steps=n, order=2,
                                                         lower_order_final=False))
    _, e_p = measured_order(VEField, lambda n: ExpPC(steps=n, order=2, corrector=False,
                                                     lower_order_final=False))
    assert o_pc > 2.6, (o_pc, e_pc)
    assert all(a < b for a, b in zip(e_pc, e_p)), (e_pc, e_p)


def test_adams_bashforth_weights_integrate_polynomials_exactly():
    """Σ_j w_j p(t_j) = ∫_{t0}^{t1} p for every polynomial of degree < k on uneven nodes."""
    import numpy as np

    nodes = [0.7, 1.3, 2.9, 5.0]
    t0, t1 = 0.7, 0.25
    for k in range(1, 5):
        w = adams_bashforth_weights(nodes[:k], t0, t1)
        for deg in range(k):
            exact = (t1 ** (deg + 1) - t0 ** (deg + 1)) / (deg + 1)
            assert abs(sum(wj * tj**deg for wj, tj in zip(w, nodes[:k])) - exact) < 1e-13
    assert np.allclose(adams_bashforth_weights([1.0, 2.0], 1.0, 0.5), [-0.625, 0.125])


def test_lms_order_4_beats_order_2_and_2m_variants_agree_to_second_order():
    """AB4 (ramping up from order 1) is more accurate than AB2 at every N; the midpoint and
    Taylor forms of DPM-Solver++(2M) differ by O(h³) per step, so their gap shrinks like h²
    (measured 15x for a 4x finer grid)."""
    _, e4 = measured_order(VEField, lambda n: AdamsBashforth(steps=n, order=4))
    _, e2 = measured_order(VEField, lambda n: AdamsBashforth(steps=n, order=2))
    assert all(a < b for a, b in zip(e4, e2)), (e4, e2)
    field = VEField()
    flow, x0, _ = exact_problem(field)
    gaps = []
    for n in (16, 64):
        grid = make_grid("uniform", n, 0.5, 2.0, final_step=False)
        a, b = (DPMSolverPP2M(steps=n, second_order=v, lower_order_final=False).solve(
            flow, x0, grid).x for v in ("midpoint", "taylor"))
        gaps.append(rms(a, b))
    assert gaps[1] < gaps[0] / 10, gaps


def test_first_order_exponential_step_is_euler_on_ve():
    """For a = 1, s = t, DPM-Solver++ of order 1 is Euler, step for step (up to rounding)."""
    field = VEField()
    flow, x0, _ = exact_problem(field)
    grid = field.default_grid(7)
    a = Euler(steps=7).solve(flow, x0, grid).x
    b = DPMSolverPP(steps=7, order=1).solve(flow, x0, grid).x
    assert rms(a, b) < 1e-12


# --- NFE accounting --------------------------------------------------------------------------
NFE_FORMULAS = {  # steps, final_step -> NFE
    "euler": (Euler, lambda n, f: n),
    "heun": (Heun, lambda n, f: 2 * n - 1 if f else 2 * n),
    "rk4": (RK4, lambda n, f: 4 * (n - 1) + 1 if f else 4 * n),
    "dpmpp2m": (DPMSolverPP2M, lambda n, f: n),
    "dpmpp3m": (DPMSolverPP3M, lambda n, f: n),
    "exppc": (ExpPC, lambda n, f: n),
    "lms": (AdamsBashforth, lambda n, f: n),
}


@pytest.mark.parametrize("name", sorted(NFE_FORMULAS))
@pytest.mark.parametrize("final_step", [True, False])
def test_nfe_is_exact_for_fixed_step_solvers(name, final_step):
    """NFE counts every network call (drift, denoiser and the last step), measured by a
    counter on the model itself."""
    field = PoissonField()
    flow, x0, _ = exact_problem(field, n_query=8)
    calls = {"n": 0}
    model = flow.model

    def counted(x, t):
        calls["n"] += 1
        return model(x, t)

    flow.model = counted
    cls, formula = NFE_FORMULAS[name]
    for steps in (1, 2, 5, 9):
        calls["n"] = 0
        solver = cls(steps=steps, final_step=final_step)
        res = solver.solve(flow, x0, solver.time_grid(field))
        assert res.nfe == formula(steps, final_step) == calls["n"], (steps, res.nfe)
        assert solver.nfe_for_steps(steps) == res.nfe
        assert len(res.eval_times) == res.nfe
        assert res.times.dtype == F64 and len(res.times) == steps + 1


def test_steps_within_is_the_largest_grid_inside_the_budget():
    for cls, formula in NFE_FORMULAS.values():
        for final_step in (True, False):
            solver = cls(steps=1, final_step=final_step)
            for nfe in (5, 10, 20, 35):
                k = solver.steps_within(nfe)
                assert formula(k, final_step) <= nfe < formula(k + 1, final_step) or k == 1
    with pytest.raises(ValueError, match="no fixed NFE"):
        Dopri5(steps=2).steps_within(10)


@pytest.mark.parametrize("time_variable", ["t", "log"])
def test_dopri5_nfe_matches_a_call_counter_and_converges(time_variable):
    field = VEField()
    flow, x0, data = exact_problem(field, n_query=32)
    calls = {"n": 0}
    model = flow.model

    def counted(x, t):
        calls["n"] += 1
        return model(x, t)

    grid = field.default_grid(10)
    ref = RK4(steps=400, grid="log").solve(flow, x0, make_grid("log", 400, field.t_min,
                                                                 field.t_max))
    flow.model = counted
    res = Dopri5(rtol=1e-7, atol=1e-7, time_variable=time_variable).solve(flow, x0, grid)
    assert res.nfe == calls["n"] > 20
    assert res.eval_times.min() >= 0 and res.eval_times.max() <= field.t_max
    assert rms(res.x, ref.x) < 1e-4
    # the samples land on the data points (the exact field's ground truth)
    assert torch.cdist(res.x, data).min(dim=1).values.max() < 0.01


def test_dopri5_max_nfe_stops_with_a_clear_error():
    """A tolerance it cannot reach within max_nfe ends the solve naming the t reached."""
    from unified_ode.solvers import NFELimitExceeded

    field = VEField()
    flow, x0, _ = exact_problem(field, n_query=8)
    with pytest.raises(NFELimitExceeded, match=r"limit of 30 network evaluations at t = "):
        Dopri5(rtol=1e-12, atol=1e-12, max_nfe=30).solve(flow, x0, field.default_grid(4))
    with pytest.raises(ValueError, match="max_nfe"):
        Dopri5(max_nfe=0)


def test_dopri5_never_evaluates_outside_the_interval():
    """torchdiffeq's own first step can overshoot t = 0 from t_max = 80; ours is clamped and
    the last step lands on t_min (drift calls at t < t_min would be singular)."""
    field = VEField()
    flow, x0, _ = exact_problem(field, n_query=16)
    res = Dopri5(rtol=1e-3, atol=1e-3, time_variable="t").solve(flow, x0,
                                                                  field.default_grid(4))
    inner = res.eval_times[:-1]  # the last call is the denoising step at t_min
    assert inner.min() >= field.t_min - 1e-12 and inner.max() <= field.t_max


# --- trajectories ----------------------------------------------------------------------------
@pytest.mark.parametrize("solver", [Euler(steps=6), Heun(steps=6), RK4(steps=6),
                                    DPMSolverPP2M(steps=6), DPMSolverPP3M(steps=6),
                                    Dopri5(steps=6, rtol=1e-4, atol=1e-4)],
                         ids=lambda s: s.name)
def test_every_solver_records_trajectories(solver):
    field = VEField()
    flow, x0, _ = exact_problem(field, n_query=8)
    grid = solver.time_grid(field)
    seen = []
    res = solver.solve(flow, x0, grid, record_every=2,
                       callback=lambda i, x, t: seen.append((i, t)))
    assert res.trajectory is not None
    assert res.trajectory.shape[1:] == x0.shape
    # steps 0, 2, 4, 6 of the 6-step grid: the first and the final state included
    assert res.trajectory_times.tolist() == pytest.approx(grid[[0, 2, 4, 6]].tolist())
    assert torch.equal(res.trajectory[0], x0) and torch.equal(res.trajectory[-1], res.x)
    assert seen[0] == (0, pytest.approx(float(grid[0]))) and seen[-1][1] == 0.0
    assert solver.solve(flow, x0, grid).trajectory is None


# --- the solver interface --------------------------------------------------------------------
def test_denoiser_solver_errors_are_clear():
    field = VEField()
    flow, x0, _ = exact_problem(field, n_query=4)
    solver = DPMSolverPP2M(steps=4)
    grid = solver.time_grid(field)
    with pytest.raises(ValueError, match="needs an affine field.*drift"):
        solver.solve(flow.drift, x0, grid)  # a bare drift has no schedule
    from unified_ode.physics import RadialGeneralField

    radial = RadialGeneralField()
    param = Velocity(radial)
    radial_flow = ProbabilityFlow(param, ExactPosterior(radial, x0[:2], parametrisation=param))
    with pytest.raises(ValueError, match="needs an affine field.*radial_general"):
        solver.solve(radial_flow, x0, grid)
    with pytest.raises(ValueError, match="strictly monotone"):
        Euler(steps=2).solve(flow, x0, torch.tensor([1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="order"):
        DPMSolverPP(order=4)
    with pytest.raises(ValueError, match="time_variable"):
        Dopri5(time_variable="sqrt")


def test_solvers_import_nothing_from_physics():
    """Solvers see the Flow protocol only (issue: solvers depend on the drift, not physics)."""
    import ast

    root = Path(__file__).resolve().parents[1] / "unified_ode" / "solvers"
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("unified_ode.physics",
                                                   "unified_ode.parametrisation")), path
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("unified_ode.physics") for a in node.names)


def test_velocity_model_gives_the_same_denoiser():
    """An affine field trained on velocity still feeds the denoiser-form solvers: the velocity
    of the exact field, converted, equals the exact denoiser."""
    g = torch.Generator().manual_seed(3)
    data = torch.randn(5, 2, generator=g, dtype=F64)
    x = 1.5 * torch.randn(16, 2, generator=g, dtype=F64)
    t = torch.full((16,), 0.7, dtype=F64)
    for cls in (VEField, SigmaVP):
        field = cls()
        flows = [ProbabilityFlow(p, ExactPosterior(field, data, parametrisation=p))
                 for p in (Denoiser(field), Velocity(field))]
        assert rms(flows[0].denoiser(x, t), flows[1].denoiser(x, t)) < 1e-10
        assert rms(flows[0].drift(x, t), flows[1].drift(x, t)) < 1e-10


# --- configs and sample.py -------------------------------------------------------------------
# ODE solvers only (solver=consistency samples a consistency function:
# tests/test_distill_consistency.py)
SOLVER_CONFIGS = sorted(p.stem for p in (CONF / "solver").glob("*.yaml")
                        if getattr(instantiate(OmegaConf.load(p)), "ode_solver", True))


@pytest.mark.parametrize("name", SOLVER_CONFIGS)
def test_solver_configs_instantiate_and_land_on_data(name):
    """Every conf/solver/*.yaml builds and, on the exact Poisson field of 4 points, lands its
    samples near the data points with the NFE it reports; describe() is JSON-serialisable."""
    solver = instantiate(OmegaConf.load(CONF / "solver" / f"{name}.yaml"))
    field = PoissonField()
    flow, x0, data = exact_problem(field, n_query=16)
    x0 = field.sample_prior(16, (2,), generator=torch.Generator().manual_seed(1), dtype=F64)
    res = solver.solve(flow, x0, solver.time_grid(field))
    assert res.nfe == len(res.eval_times) > 0
    assert torch.cdist(res.x, data).min(dim=1).values.median() < 0.05
    json.dumps(solver.describe())


def test_pfgm_rk45_config_is_pfgms_setting():
    cfg = OmegaConf.load(CONF / "solver" / "pfgm_rk45.yaml")
    solver = instantiate(cfg)
    assert (solver.time_variable, solver.rtol, solver.atol) == ("log", 1e-4, 1e-4)
    grid = solver.time_grid(PoissonField(t_max=40.0))
    assert grid[0] == 40.0 and grid[-1] == pytest.approx(1e-3) and grid.min() > 0


@pytest.mark.slow
def test_sample_py_dopri5_prints_measured_nfe(tmp_path: Path):
    out = tmp_path / "dopri5"
    proc = run_script("sample.py", "network=exact", "solver=dopri5", "n=200",
                      "dataset.n_train=2000", "record_every=0", f"out_dir={out}")
    info = json.loads((out / "sample_info.json").read_text())
    nfe = info["nfe_per_batch"][0]
    assert f"NFE: {nfe}" in proc.stdout
    assert nfe > 20 and info["solver"]["solver"] == "dopri5"
    assert info["solver"]["rtol"] == 1e-5
