"""Scoring one trained run, in process, exactly as ``sample.py`` scores it.

Each run is loaded as ``sample.py`` loads it (``load_model``, EMA weights when present) and
scored by :class:`~unified_ode.metrics.scoring.SampleScorer` as ``sample.py task=evaluate``
does (``sw@n``/``mmd@n`` for points against held-out data, ``fid@n``/``kid@n``/``is@n`` for
images) at every cell (plan.grid_cells + probes.probe_cells); bits/dim come from
``sample.py task=likelihood``'s function; the report's figure samples are drawn once. Every
result is cached as JSON (or ``.npz``) under ``<run>/case_study/`` and reused. A solver that
needs a denoiser form on a non-affine field is recorded ``n/a``; a setting that raises is
logged and left out (the study goes on).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from .plan import (
    Cell,
    Run,
    Study,
    build_solver,
    cache_dir,
    figure_file,
    first_seed,
    grid_cells,
    likelihood_key,
    solver_kind,
    steps_for,
)
from .probes import noisy_model, probe_cells
from .util import CONF, log, write_json


def cells_for(study: Study, run: Run) -> list[Cell]:
    """Every scored setting of ``run``: the solver × NFE grid, the adaptive solver, the
    probes (one cell per key)."""
    cells = {c.key: c for c in [*grid_cells(study, run.dataset),
                                *probe_cells(study, run.dataset)]}
    return list(cells.values())


def not_applicable(solver_name: str, field) -> str | None:
    """Why ``solver_name`` cannot sample ``field`` (None: it can). The one place the study
    asks the solvers about a field's form."""
    if solver_kind(solver_name).needs_schedule and field.schedule() is None:
        return f"{solver_name} needs an affine field (denoiser form)"
    return None


@contextlib.contextmanager
def hydra_conf():
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


class Loader:
    """Loads a run as sample.py does, once, on first use."""

    def __init__(self, run: Run, device: str):
        self.run, self.device, self.loaded = run, device, None

    def compose(self, *overrides: str):
        from hydra import compose

        from unified_ode.app.sample import register_resolvers

        register_resolvers()
        with hydra_conf():
            return compose(config_name="sample",
                           overrides=[f"run={self.run.run_dir}", *overrides])

    def get(self):
        if self.loaded is None:
            from unified_ode.app.sample import load_model

            cfg = self.compose("task=evaluate")
            with hydra_conf():
                self.loaded = load_model(cfg, [])
            self.loaded.module.to(self.device)
            if not self.loaded.ema:  # load_model loads the EMA weights when present
                log(f"  (no EMA weights in {self.loaded.checkpoint}: raw weights)")
        return self.loaded


def score_cells(study: Study, run: Run, loader: Loader) -> None:
    """Scores every cell of ``run`` without a cached result."""
    from unified_ode.metrics.scoring import SampleScorer

    cfg, ds = study.cfg, study.cfg["datasets"][run.dataset]
    cdir = cache_dir(study, run)
    todo = [c for c in cells_for(study, run) if not (cdir / f"{c.key}.json").is_file()]
    if not todo:
        return
    log(f"[eval] {run.dataset}/{run.field}/seed{run.seed}: {len(todo)} setting(s)")
    loaded = loader.get()
    module = loaded.module
    scorer = SampleScorer(n_samples=int(ds["n"]),
                          batch_size=min(int(cfg["eval"]["batch_size"]), int(ds["n"])),
                          seed=int(cfg["eval"]["seed"]), **(cfg["eval"]["scorer"] or {}))
    scorer.prepare(loaded.datamodule, device=module.device)
    for cell in todo:
        record = {"solver": cell.solver, "steps": cell.steps, "eps": cell.eps,
                  "kind": scorer.kind, "primary": scorer.primary(scorer.kind),
                  "ema": loaded.ema, "params": module.num_parameters(), "code": study.code}
        reason = not_applicable(cell.solver, module.field)
        if reason:
            write_json(cdir / f"{cell.key}.json", {**record, "na": reason})
            continue
        solver = build_solver(cell.solver, cell.steps, cell.overrides)
        try:
            with noisy_model(module, cell.eps, cfg["eval"]["seed"]):
                metrics, _ = scorer.score(module, solver)
        except Exception as exc:  # a field that fails is reported, the study goes on
            log(f"  {cell.key}: FAILED {type(exc).__name__}: {str(exc).splitlines()[0]}")
            continue
        record.update(metrics=metrics, nfe=metrics["nfe"], seconds=metrics["eval/seconds"],
                      describe=solver.describe())
        write_json(cdir / f"{cell.key}.json", record)
        log(f"  {cell.key}: {record['primary']}={metrics[record['primary']]:.5g} "
            f"NFE={metrics['nfe']:g} ({metrics['eval/seconds']:.1f} s)")


def bits_per_dim(study: Study, run: Run, loader: Loader) -> None:
    """``sample.py task=likelihood`` on the run's EMA weights (settings: ``likelihood:``)."""
    cfg = study.cfg
    lk_dir = cache_dir(study, run) / likelihood_key(study)
    if not cfg["datasets"][run.dataset].get("likelihood") or \
            (lk_dir / "likelihood.json").is_file():
        return
    from unified_ode.app.likelihood import likelihood_task

    loaded = loader.get()
    lcfg = loader.compose("task=likelihood", f"seed={int(cfg['eval']['seed'])}",
                          *[f"likelihood.{k}={v}" for k, v in cfg["likelihood"].items()])
    log(f"[likelihood] {run.dataset}/{run.field}/seed{run.seed}")
    try:
        likelihood_task(lcfg, loaded, lk_dir)
    except Exception as exc:
        log(f"  likelihood FAILED {type(exc).__name__}: {str(exc).splitlines()[0]}")


def figure_samples(study: Study, run: Run, loader: Loader) -> None:
    """The samples of the report's per-field figure (first seed only): points with their
    trajectories and held-out data, or uint8 images; saved as ``.npz``."""
    fig = figure_file(study, run)
    if not first_seed(study, run) or fig.is_file():
        return
    loaded = loader.get()
    module, f = loaded.module, study.cfg["figures"]
    solver = build_solver(f["solver"], steps_for(f["solver"], f["nfe"]))
    images = getattr(loaded.datamodule, "kind", None) == "images"
    g = torch.Generator().manual_seed(int(study.cfg["eval"]["seed"]) + 7)
    n = int(f["n_images"] if images else f["n_points"])
    x_T = module.field.sample_prior(n, module.data_shape, generator=g)
    result = module.sample(x_T=x_T, solver=solver, record_every=0 if images else 1)
    arrays = {"samples": result.x.cpu().numpy(), "nfe": result.nfe}
    if images:
        from unified_ode.viz.images import to_uint8_nhwc

        arrays["samples"] = to_uint8_nhwc(result.x.cpu())
    else:
        arrays["trajectory"] = result.trajectory[:, : int(f["n_lines"])].cpu().numpy()
        arrays["trajectory_times"] = result.trajectory_times.cpu().numpy()
        arrays["data"] = loaded.datamodule.heldout(n).cpu().numpy()
    fig.parent.mkdir(parents=True, exist_ok=True)
    tmp = fig.with_name(fig.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(fig)


def evaluate(study: Study, run: Run, device: str) -> None:
    """Everything measured on a trained run: scores, bits/dim, the figure's samples."""
    loader = Loader(run, device)
    score_cells(study, run, loader)
    bits_per_dim(study, run, loader)
    figure_samples(study, run, loader)
