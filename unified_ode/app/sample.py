"""``sample.py``: reload a run (or build the exact field), sample, write ``.npz`` + figure."""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from hydra import compose
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from unified_ode.app.build import build_module, is_exact
from unified_ode.app.runs import default_checkpoint, load_run_config, load_weights
from unified_ode.errors import UserError
from unified_ode.viz import plot_points_with_trajectories

#: Config groups that define the model; with ``run=...`` they come from the run.
MODEL_GROUPS = ("physics", "network", "dataset", "solver")
SAMPLES_FILE = "samples.npz"


def sample_dir(out_dir, run) -> str:
    """Hydra resolver ``uode_sample_dir``: where a sampling job writes (a new directory)."""
    if out_dir:
        return str(out_dir)
    stamp = datetime.now()
    if run and Path(str(run)).is_dir():  # a mistyped run dir is reported, never created
        return str(Path(str(run)) / "samples" / stamp.strftime("%Y-%m-%d_%H-%M-%S"))
    return str(Path("samples") / stamp.strftime("%Y-%m-%d") / stamp.strftime("%H-%M-%S"))


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("uode_sample_dir"):
        OmegaConf.register_new_resolver("uode_sample_dir", sample_dir, use_cache=True)


def _override_root(override: str) -> str:
    key = override.lstrip("+~").split("=", 1)[0]
    return key.split("@", 1)[0].split(".", 1)[0].split("/", 1)[0]


def model_config(cfg: DictConfig, user_overrides: list[str]) -> DictConfig:
    """The physics/network/dataset/solver config to sample with.

    Without ``run``: ``cfg`` itself. With ``run``: the run's saved groups, except the groups the
    user overrode on this command line, which are recomposed from the run's own training
    overrides plus the user's (so ``solver.steps=20`` changes the run's solver, and
    ``solver=euler`` replaces it).
    """
    if not cfg.run:
        return cfg
    saved, train_overrides = load_run_config(cfg.run)
    touched = [o for o in user_overrides if _override_root(o) in MODEL_GROUPS]
    missing = [g for g in MODEL_GROUPS if g not in saved]
    if missing:
        raise UserError(f"the config of run {cfg.run!r} has no {', '.join(missing)} section: "
                        "it was not written by unified_ode's train.py. Pass a run directory "
                        "that train.py created.")
    merged = OmegaConf.create({g: saved[g] for g in MODEL_GROUPS})
    if touched:
        recomposed = compose(config_name="train", overrides=train_overrides + touched)
        for group in {_override_root(o) for o in touched}:
            merged[group] = recomposed[group]
    return merged


#: ``task=<name>`` of sample.py -> ``"module:function"`` taking ``(cfg, loaded, out_dir)``.
TASKS = {
    "sample": "unified_ode.app.sample:sample_task",
    "likelihood": "unified_ode.app.likelihood:likelihood_task",
    "evaluate": "unified_ode.app.evaluate:evaluate_task",
}


@dataclass
class Loaded:
    """A model ready to use: the module (weights loaded), its data module and config."""

    module: object
    datamodule: object
    config: DictConfig
    checkpoint: Path | None


def load_model(cfg: DictConfig, user_overrides: list[str]) -> Loaded:
    """Build the module for ``cfg`` (a run, a checkpoint, or the exact field) and load weights."""
    mcfg = model_config(cfg, user_overrides)
    ckpt = None
    if not is_exact(mcfg):
        if cfg.ckpt_path:
            ckpt = Path(cfg.ckpt_path)
        elif cfg.run:
            ckpt = default_checkpoint(cfg.run)
        else:
            raise UserError("nothing to sample from: pass run=<training run dir>, "
                            "ckpt_path=<file.ckpt>, or network=exact for the exact field.")
    module, datamodule = build_module(mcfg)
    if ckpt is not None:
        load_weights(module, ckpt, f"network={mcfg.network.get('_target_')}")
    module.eval()
    return Loaded(module, datamodule, mcfg, ckpt)


def run_task(cfg: DictConfig, user_overrides: list[str], out_dir: str | Path) -> dict:
    """Entry point of sample.py: load the model, then run ``cfg.task``."""
    task = str(cfg.get("task", "sample"))
    if task not in TASKS:
        raise UserError(f"unknown task={task!r}; choose one of {', '.join(TASKS)}")
    out_dir = Path(out_dir)
    if (out_dir / SAMPLES_FILE).exists():
        raise UserError(f"{out_dir / SAMPLES_FILE} already exists; refusing to overwrite it. "
                        "Pass out_dir=<a new directory>.")
    loaded = load_model(cfg, user_overrides)
    module_name, func = TASKS[task].split(":")
    return getattr(importlib.import_module(module_name), func)(cfg, loaded, out_dir)


def sample_task(cfg: DictConfig, loaded: Loaded, out_dir: Path) -> dict:
    """``task=sample``: ``n`` samples in batches, ``samples.npz`` + info + figure."""
    if int(cfg.n) < 1 or int(cfg.batch_size) < 1:
        raise UserError(f"n and batch_size must be positive, got n={cfg.n}, "
                        f"batch_size={cfg.batch_size}")
    module, datamodule, mcfg, ckpt = (loaded.module, loaded.datamodule, loaded.config,
                                      loaded.checkpoint)
    solver = instantiate(mcfg.solver)
    out_dir.mkdir(parents=True, exist_ok=True)

    n, bs, seed = int(cfg.n), int(cfg.batch_size), int(cfg.seed)
    chunks, nfes, first = [], [], None
    start = time.perf_counter()
    for i, lo in enumerate(range(0, n, bs)):
        g = torch.Generator().manual_seed(seed * 100_003 + i)
        x_T = module.sample_prior(min(bs, n - lo), generator=g)
        solver.record_every = int(cfg.record_every) if i == 0 else 0
        result = module.sample(x_T=x_T, solver=solver)
        first = first or result
        chunks.append(result.x.cpu())
        nfes.append(result.nfe)
    seconds = time.perf_counter() - start
    samples = torch.cat(chunks)

    np.savez(out_dir / SAMPLES_FILE, samples=samples.numpy(), nfe=np.array(nfes),
             times=first.times.numpy(), seed=seed)
    info = {"n": n, "batch_size": bs, "seed": seed, "nfe_per_batch": nfes,
            "wall_seconds": seconds, "checkpoint": str(ckpt) if ckpt else None,
            "run": cfg.run, "field": module.field.describe(), "solver": solver.describe(),
            "grid": first.times.tolist()}
    (out_dir / "sample_info.json").write_text(json.dumps(info, indent=2))
    (out_dir / "sample_config.yaml").write_text(OmegaConf.to_yaml(mcfg))
    figure = None
    if getattr(datamodule, "kind", None) == "points":
        figure = plot_points_with_trajectories(
            out_dir / "samples.png", datamodule.heldout(min(n, 5000)), samples,
            first.trajectory, first.trajectory_times,
            title=f"{module.field.name}: {solver.name} NFE={nfes[0]}, n={n}")
    nfe_text = str(nfes[0]) if len(set(nfes)) == 1 else f"{nfes} (per batch)"
    print(f"NFE: {nfe_text}")
    print(f"wall time: {seconds:.3f} s for {n} samples ({len(nfes)} batch(es))")
    print(f"wrote {out_dir / SAMPLES_FILE}" + (f" and {figure}" if figure else ""))
    return {"out_dir": str(out_dir), "nfe": nfes, "seconds": seconds, "samples": samples}
