"""Optimised time grids (issue 12 §3): the GITS dynamic programme, grid files, and
``sample.py task=optimise_grid`` / ``solver.grid=<file>`` with ``network=exact``."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from tests.conftest import run_script
from unified_ode.errors import UserError
from unified_ode.parametrisation import ProbabilityFlow
from unified_ode.physics import LinearField, VEField, VPField
from unified_ode.solvers import IPNDM, Heun, UniPC
from unified_ode.solvers.gits import (
    best_path,
    grid_cost,
    nested_fine_grid,
    optimise_grid,
    teacher_end,
)
from unified_ode.timegrid import GRID_FILE_FORMAT, GridFileError, jsonable

F64 = torch.float64
#: 16 points in 2-D (a small exact field with curved trajectories)
DATA = torch.randn(16, 2, generator=torch.Generator().manual_seed(3), dtype=F64)


def prior(field, n=48, seed=0):
    return field.sample_prior(n, (2,), generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_dynamic_programme_finds_the_cheapest_path():
    """Against brute force over every subset, on random costs."""
    g = torch.Generator().manual_seed(0)
    m = 8
    cost = torch.rand(m, m, generator=g, dtype=F64)
    cost = torch.where(torch.arange(m)[None] > torch.arange(m)[:, None], cost,
                       torch.full_like(cost, float("inf")))
    for k in (1, 3, 5, 7):
        path, total = best_path(cost, k)
        brute = min(sum(float(cost[a, b]) for a, b in zip(p[:-1], p[1:]))
                    for mid in itertools.combinations(range(1, m - 1), k - 1)
                    for p in [(0, *mid, m - 1)])
        assert total == pytest.approx(brute)
        assert path[0] == 0 and path[-1] == m - 1 and len(path) == k + 1
    with pytest.raises(ValueError, match="cannot pick"):
        best_path(cost, m)


def test_fine_grid_contains_the_default_grid():
    field = VEField()
    default = field.default_grid(6)
    fine = nested_fine_grid(default, 40, final_step=True)
    assert bool(torch.all(fine[1:] < fine[:-1])) and 36 <= len(fine) <= 46
    for t in default[:-1]:
        assert bool(torch.isclose(fine, t, rtol=1e-12, atol=0).any()), float(t)


@pytest.mark.parametrize("field_cls, solver", [(VEField, IPNDM(steps=5)),
                                               (VPField, UniPC(steps=4)),
                                               (LinearField, Heun(steps=3))],
                         ids=["ve-ipndm", "vp-unipc", "linear-heun"])
def test_optimised_grid_shape_and_cost(field_cls, solver):
    """Strictly decreasing, from t_max, ending with t_min and the exact last step to 0, and a
    summed one-step error (recomputed here on the same trajectories) never above the default
    grid's."""
    field = field_cls()
    flow = ProbabilityFlow.exact(field, DATA)
    default = solver.time_grid(field)
    fitted = optimise_grid(solver, flow, default, prior(field), fine_points=24, substeps=2)
    t = fitted.times
    assert len(t) == solver.steps + 1
    assert bool(torch.all(t[1:] < t[:-1]))
    assert float(t[0]) == field.t_max and float(t[-1]) == 0.0
    assert float(t[-2]) == pytest.approx(field.t_min, rel=1e-12)
    assert fitted.cost <= fitted.default_cost + 1e-12
    # independent recomputation on the same reference trajectories
    from unified_ode.solvers.gits import reference_trajectories

    fine = nested_fine_grid(default, 24, final_step=True)
    traj, _ = reference_trajectories(flow, prior(field), fine, 2)
    assert grid_cost(solver, flow, traj, fine, t) == pytest.approx(fitted.cost, rel=1e-9)
    assert grid_cost(solver, flow, traj, fine, default) == pytest.approx(fitted.default_cost,
                                                                        rel=1e-9)


def test_optimised_grid_reduces_the_final_error_on_fresh_draws():
    """What it is for: on prior draws it was not fitted on, iPNDM at 5 steps ends closer to the
    reference solution with the optimised grid than with the default grid (VE)."""
    from unified_ode.solvers import Dopri5

    field = VEField()
    flow = ProbabilityFlow.exact(field, DATA)
    solver = IPNDM(steps=5)
    fitted = optimise_grid(solver, flow, solver.time_grid(field), prior(field, 64, 0),
                           fine_points=32, substeps=2)
    x = prior(field, 64, 1)
    ref = Dopri5(steps=2, rtol=1e-8, atol=1e-8)
    xr = ref.solve(flow, x, ref.time_grid(field)).x

    def err(grid):
        return float((solver.solve(flow, x, grid).x - xr).pow(2).mean().sqrt())

    assert err(fitted.times) < err(solver.time_grid(field))


def write_grid(tmp_path, field, solver, times=None, **changes):
    times = solver.time_grid(field) if times is None else times
    info = {"format": GRID_FILE_FORMAT, "times": times.tolist(), "solver": solver.name,
            "steps": solver.steps, "final_step": solver.final_step,
            "field": jsonable(field.describe()), **changes}
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(info))
    return path


def test_grid_file_is_used_and_checked(tmp_path):
    field = VEField()
    times = torch.tensor([80.0, 5.0, 1.0, 0.2, 0.002, 0.0], dtype=F64)
    path = write_grid(tmp_path, field, IPNDM(steps=5), times)
    solver = IPNDM(steps=5, grid=str(path))
    assert torch.equal(solver.time_grid(field), times)
    assert solver.describe()["grid"] == str(path)
    # fitted for another field / solver / step count: clear errors
    with pytest.raises(GridFileError, match="fitted for the field"):
        solver.time_grid(VPField())
    with pytest.raises(GridFileError, match="solver=ipndm, not solver=unipc"):
        UniPC(steps=5, grid=str(path)).time_grid(field)
    with pytest.raises(GridFileError, match="steps=5, not steps=4"):
        IPNDM(steps=4, grid=str(path)).time_grid(field)


def test_bad_grid_values_are_clear_errors(tmp_path):
    with pytest.raises(GridFileError, match="neither a grid kind"):
        IPNDM(grid=str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(GridFileError, match="not a readable JSON"):
        IPNDM(grid=str(bad))
    bad.write_text(json.dumps({"times": [1.0, 0.0]}))
    with pytest.raises(GridFileError, match="missing"):
        IPNDM(grid=str(bad))
    path = write_grid(tmp_path, VEField(), IPNDM(steps=2),
                      torch.tensor([80.0, 90.0, 0.0], dtype=F64))
    with pytest.raises(GridFileError, match="strictly decreasing"):
        IPNDM(steps=2, grid=str(path))
    with pytest.raises(GridFileError, match="run=<dir>"):
        IPNDM(grid="optimised").time_grid(VEField())
    assert issubclass(GridFileError, UserError) and issubclass(GridFileError, ValueError)


@pytest.mark.slow
def test_sample_py_optimise_grid_then_sample_with_it(tmp_path):
    """network=exact: task=optimise_grid writes the grid file (with solver, NFE and what was
    minimised, below the default grid's cost); sampling with solver.grid=<file> uses and
    records it; a second fit refuses to overwrite; solver.grid=optimised without a run and a
    grid for another field are clear errors."""
    common = ["network=exact", "physics=ve", "dataset.n_train=200", "solver=ipndm",
              "solver.steps=4"]
    run_script("sample.py", *common, "task=optimise_grid", "grid_fit.n=32",
               "grid_fit.fine_points=16", "grid_fit.substeps=2", f"out_dir={tmp_path / 'fit'}")
    path = tmp_path / "fit" / "ipndm_steps4.json"
    info = json.loads(path.read_text())
    assert info["solver"] == "ipndm" and info["nfe"] == 4 and info["steps"] == 4
    assert "RMS" in info["minimised"] and info["cost"] <= info["default_cost"]
    assert info["refined"] is None and info["times"] == info["gits_times"]
    run_script("sample.py", *common, "task=optimise_grid", "grid_fit.n=32",
               "grid_fit.fine_points=16", "grid_fit.substeps=2", "grid_fit.refine=true",
               f"grid_fit.out={tmp_path / 'refined.json'}", f"out_dir={tmp_path / 'fit3'}")
    refined = json.loads((tmp_path / "refined.json").read_text())
    assert "final samples" in refined["minimised"] and len(refined["times"]) == 5
    assert refined["refined"]["final_error"] <= refined["refined"]["start_final_error"]
    run_script("sample.py", *common, f"solver.grid={path}", "n=50", "record_every=0",
               f"out_dir={tmp_path / 's'}")
    sample_info = json.loads((tmp_path / "s" / "sample_info.json").read_text())
    assert sample_info["grid"] == info["times"]
    assert sample_info["solver"]["grid_fit"]["path"] == str(path)
    again = run_script("sample.py", *common, "task=optimise_grid", "grid_fit.n=8",
                       f"grid_fit.out={path}", f"out_dir={tmp_path / 'fit2'}", check=False)
    assert again.returncode != 0 and "refusing to overwrite" in again.stderr
    other = run_script("sample.py", "network=exact", "physics=vp", "dataset.n_train=200",
                       "solver=ipndm", "solver.steps=4", f"solver.grid={path}", "n=10",
                       f"out_dir={tmp_path / 's2'}", check=False)
    assert other.returncode != 0 and "fitted for the field" in other.stderr
    assert "Traceback" not in other.stderr
    none = run_script("sample.py", *common, "solver.grid=optimised", "n=10",
                      f"out_dir={tmp_path / 's3'}", check=False)
    assert none.returncode != 0 and "run=<dir>" in none.stderr


def test_refined_grid_never_worse_than_its_starting_grids_on_the_fitting_draws():
    """refine_grid (issue 12 §3, LD3-style): same length, t_max, t_min and final 0, strictly
    decreasing; its final-sample error against the teacher (recomputed here) is the reported
    one and at most the best starting grid's; the teacher's final samples are the exact last
    step of its states at t_min; mismatched starting grids and a bad `at` are clear errors."""
    from unified_ode.solvers.gits import final_error, refine_grid

    field = VEField()
    flow = ProbabilityFlow.exact(field, DATA)
    solver = UniPC(steps=6)
    default = solver.time_grid(field)
    x = prior(field, 32, 0)
    fitted = optimise_grid(IPNDM(steps=6), flow, default, x, fine_points=24, substeps=2)
    t_min = torch.tensor(field.t_min, dtype=F64)
    assert torch.equal(fitted.teacher_end, flow.last_step(fitted.teacher, t_min))
    refined = refine_grid(solver, flow, [fitted.times, default], x, fitted.teacher_end, sweeps=2)
    t = refined.times
    assert len(t) == len(default) and bool(torch.all(t[1:] < t[:-1]))
    assert float(t[0]) == field.t_max and float(t[-1]) == 0.0
    assert float(t[-2]) == pytest.approx(field.t_min, rel=1e-12)
    starts = [final_error(solver, flow, g, x, fitted.teacher_end)[0]
              for g in (fitted.times, default)]
    assert refined.start_error == pytest.approx(min(starts), rel=1e-12)
    assert final_error(solver, flow, t, x, fitted.teacher_end)[0] == pytest.approx(
        refined.error, rel=1e-12)
    assert refined.error <= refined.start_error
    assert refined.nfe_fit > 0
    with pytest.raises(ValueError, match="share their length"):
        refine_grid(solver, flow, [default, IPNDM(steps=5).time_grid(field)], x,
                    fitted.teacher_end)
    with pytest.raises(ValueError, match="at must be"):
        final_error(solver, flow, default, x, fitted.teacher_end, at="middle")


def test_teacher_end_without_the_fit_is_the_fits_own():
    """``teacher_end`` (for refining a stored grid without fitting it again) gives exactly the
    ``teacher_end`` that :func:`optimise_grid` stores for the same draws and settings."""
    field = VEField()
    flow = ProbabilityFlow.exact(field, DATA)
    solver = IPNDM(steps=4)
    default = solver.time_grid(field)
    x = prior(field, 16, 1)
    fitted = optimise_grid(solver, flow, default, x, fine_points=16, substeps=2)
    assert torch.equal(teacher_end(flow, default, x, fine_points=16, substeps=2),
                       fitted.teacher_end)
