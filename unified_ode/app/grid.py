"""``sample.py task=optimise_grid``: fit a GITS grid for one solver and step count, and the
``solver.grid=optimised`` option that reads it back.

    python sample.py run=<dir> task=optimise_grid solver=ipndm solver.steps=5
    python sample.py run=<dir> solver=ipndm solver.steps=5 solver.grid=optimised

The grid is fitted on ``grid_fit.n`` trajectories of the model itself (its EMA weights when it
has them) from prior draws of seed ``grid_fit.seed`` (see :mod:`unified_ode.solvers.gits`)
and written to ``<run>/grids/<solver>_steps<N>.json`` (``_nofinal`` without the final step
to 0) with the solver, its NFE, what was minimised and the default grid's cost on the same
trajectories. With ``network=exact`` (no run directory) it goes to the sampling directory;
pass its path as ``solver.grid=<path>``. An existing grid file is never overwritten.

``grid_fit.refine=true`` then refines the GITS grid for this solver by coordinate descent on
its own final-sample error against the reference trajectories' ends, on the same draws
(:func:`unified_ode.solvers.gits.refine_grid`, starting from the better of the GITS and the
default grid); the file records both objectives.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from unified_ode.errors import UserError
from unified_ode.solvers.gits import optimise_grid, refine_grid
from unified_ode.timegrid import GRID_FILE_FORMAT, OPTIMISED, is_grid_file_option, jsonable

GRIDS_DIR = "grids"
MINIMISED = ("sum over the grid's steps (the exact final step to 0 excluded) of the RMS "
             "(over samples and coordinates) of one solver step from a fresh state, started on "
             "the reference trajectory, minus the reference state at the step's end; reference: "
             "RK4 with `substeps` steps per fine-grid interval")
REFINED = ("then (grid_fit.refine) the RMS of the solver's final samples, solved over the whole "
           "grid from the same prior draws, minus the reference trajectories' final samples "
           "(coordinate descent in log t from the better of the GITS and the default grid)")


def grid_file_name(solver_name: str, steps: int, final_step: bool) -> str:
    return f"{solver_name}_steps{int(steps)}{'' if final_step else '_nofinal'}.json"


def resolve_grid_option(mcfg: DictConfig, run) -> DictConfig:
    """Replace ``solver.grid=optimised`` by the run directory's grid file for this solver and
    step count (a :class:`UserError` when there is none); other values are left alone."""
    if mcfg.solver.get("grid") != OPTIMISED:
        return mcfg
    solver = instantiate(mcfg.solver, grid=None)
    name = grid_file_name(solver.name, solver.steps, solver.final_step)
    if not run:
        raise UserError("solver.grid=optimised reads <run>/grids/" + name + ": pass run=<dir>, "
                        "or give the grid file's path: solver.grid=<path/to/grid.json>")
    path = Path(str(run)) / GRIDS_DIR / name
    if not path.is_file():
        raise UserError(f"no optimised grid for solver={solver.name} with steps={solver.steps} "
                        f"in {path.parent}; fit it with `python sample.py run={run} "
                        f"task=optimise_grid solver=<this solver> solver.steps={solver.steps}`")
    mcfg = mcfg.copy()
    mcfg.solver.grid = str(path)
    return mcfg


def optimise_grid_task(cfg: DictConfig, loaded, out_dir: Path) -> dict:
    """``task=optimise_grid``: see the module docstring."""
    module, mcfg = loaded.module, loaded.config
    if mcfg.solver.get("grid") == OPTIMISED or is_grid_file_option(mcfg.solver.get("grid")):
        raise UserError("task=optimise_grid fits a grid from the solver's default grid; leave "
                        "solver.grid at null or a grid kind (edm, log, uniform)")
    solver = instantiate(mcfg.solver)
    fit = cfg.get("grid_fit") or {}
    n, seed = int(fit.get("n", 256)), int(fit.get("seed", 0))
    fine_points, substeps = int(fit.get("fine_points", 64)), int(fit.get("substeps", 4))
    refine = bool(fit.get("refine", False))
    if n < 1 or fine_points < 2 or substeps < 1:
        raise UserError(f"grid_fit needs n >= 1, fine_points >= 2, substeps >= 1; got n={n}, "
                        f"fine_points={fine_points}, substeps={substeps}")
    if solver.nfe_for_steps(1) is None:
        raise UserError(f"solver={solver.name} is adaptive: it has no grid to optimise")
    name = grid_file_name(solver.name, solver.steps, solver.final_step)
    if fit.get("out"):
        path = Path(str(fit["out"]))
    elif cfg.run:
        path = Path(str(cfg.run)) / GRIDS_DIR / name
    else:
        path = Path(out_dir) / name
    if path.exists():
        raise UserError(f"{path} already exists; refusing to overwrite it. Delete it or pass "
                        "grid_fit.out=<another file>.")
    default = solver.time_grid(module.field)
    g = torch.Generator().manual_seed(seed)
    x_T = module.sample_prior(n, generator=g).to(module.device)
    start = time.perf_counter()
    with module.use_ema(bool(cfg.get("ema", True))):
        fitted = optimise_grid(solver, module.flow(), default, x_T, fine_points=fine_points,
                               substeps=substeps)
        times, refined = fitted.times, None
        if refine:
            refined = refine_grid(solver, module.flow(), [fitted.times, default], x_T,
                                  fitted.teacher_end)
            times = refined.times
    seconds = time.perf_counter() - start
    info = {"format": GRID_FILE_FORMAT, "times": times.tolist(), "solver": solver.name,
            "steps": solver.steps, "final_step": solver.final_step,
            "nfe": solver.nfe_for_steps(solver.steps),
            "field": jsonable(module.field.describe()),
            "minimised": MINIMISED + ("; " + REFINED if refine else ""),
            "cost": fitted.cost, "default_cost": fitted.default_cost,
            "gits_times": fitted.times.tolist(),
            "refined": None if refined is None else {
                "final_error": refined.error, "start_final_error": refined.start_error,
                "moves": refined.accepted, "nfe": refined.nfe_fit},
            "default_times": fitted.default_times.tolist(), "trajectories": fitted.trajectories,
            "seed": seed, "fine_points": fitted.fine_points, "substeps": fitted.substeps,
            "nfe_fit": fitted.nfe_fit + (refined.nfe_fit if refined else 0),
            "seconds": seconds, "run": cfg.run,
            "checkpoint": str(loaded.checkpoint) if loaded.checkpoint else None,
            "weights": "ema" if loaded.ema else "raw",
            "solver_config": OmegaConf.to_container(mcfg.solver, resolve=True),
            "created": datetime.now().isoformat(timespec="seconds")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2))
    use = "solver.grid=optimised" if cfg.run and not fit.get("out") else f"solver.grid={path}"
    print(f"grid for {solver.name}, steps={solver.steps} (NFE {info['nfe']}): "
          + ", ".join(f"{t:.4g}" for t in info["times"]))
    print(f"summed one-step error on {n} trajectories: {fitted.cost:.4g} "
          f"(default grid: {fitted.default_cost:.4g}); fitted in {seconds:.1f} s "
          f"({info['nfe_fit']} network calls)")
    if refined is not None:
        print(f"refined for {solver.name}: final-sample error {refined.error:.4g} "
              f"(from {refined.start_error:.4g}, {refined.accepted} moves)")
    print(f"wrote {path}; sample with it: {use}")
    return {"path": str(path), "times": times, "cost": fitted.cost,
            "default_cost": fitted.default_cost, "seconds": seconds}
