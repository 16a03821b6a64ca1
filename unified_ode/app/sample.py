"""``sample.py``: reload a run (or build the exact field), sample, write ``.npz`` + figure."""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra import compose
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from unified_ode.app.build import build_module, is_exact
from unified_ode.app.resolvers import register_resolvers, sample_dir  # noqa: F401 (re-exported)
from unified_ode.app.runs import default_checkpoint, load_run_config, load_weights
from unified_ode.errors import UserError
from unified_ode.guidance import batch_labels, conditional_request, guidance_info
from unified_ode.viz.images import save_image_grid, to_uint8_nhwc

#: Config groups that define the model; with ``run=...`` they come from the run.
MODEL_GROUPS = ("objective", "physics", "network", "dataset", "solver")
SAMPLES_FILE = "samples.npz"
#: ``export=``: extra outputs of ``task=sample`` (None: samples.npz and the figure only).
EXPORTS = (None, "png")
#: ``export=png``: the folder (beside samples.npz) of one PNG per image.
PNG_DIR = "samples_png"


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
    saved, train_overrides = load_run_config(cfg.run, trust=bool(cfg.get("trust_run_config")))
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
    "optimise_grid": "unified_ode.app.grid:optimise_grid_task",
}


@dataclass
class Loaded:
    """A model ready to use: the module (weights loaded), its data module and config."""

    module: object
    datamodule: object
    config: DictConfig
    checkpoint: Path | None
    ema: bool = False  # the module holds the checkpoint's EMA weights


def load_model(cfg: DictConfig, user_overrides: list[str]) -> Loaded:
    """Build the module for ``cfg`` (a run, a checkpoint, or the exact field) and load weights."""
    from unified_ode.app.grid import resolve_grid_option

    mcfg = resolve_grid_option(model_config(cfg, user_overrides), cfg.run)
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
    used_ema = False
    if ckpt is not None:
        used_ema = load_weights(module, ckpt, f"network={mcfg.network.get('_target_')}",
                                ema=bool(cfg.get("ema", True)))
    module.eval()
    return Loaded(module, datamodule, mcfg, ckpt, used_ema)


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


def batch_seed(seed: int, index: int) -> int:
    """The seed of batch ``index`` of a sampling job with ``seed``: each batch can be redone
    alone, and batch 0 of one seed is not batch 1 of another."""
    return int(seed) * 100_003 + int(index)


def generate(module, solver, n: int, *, batch_size: int, seed: int, temperature: float = 1.0,
             record_every: int = 0, progress: bool = True, batch_options=None):
    """``n`` samples from ``module`` with ``solver`` in batches of ``batch_size``; batch ``i``
    draws its prior states from seed :func:`batch_seed` ``(seed, i)``, scaled by
    ``temperature``. The first batch records every ``record_every``-th state (0: none).

    Returns ``(samples, nfes, first)``: samples ``(n, *data_shape)`` float32 on the CPU, the
    NFE of each batch, and the first batch's :class:`~unified_ode.solvers.SolveResult` (its
    trajectory for figures). Progress: a bar over batches, or, for one batch, over the
    solver's steps. ``batch_options(lo)``: extra keyword arguments of ``module.sample`` for the
    batch starting at sample ``lo`` (labels and guidance of a conditional draw).
    """
    if int(n) < 1 or int(batch_size) < 1:
        raise UserError(f"n and batch_size must be positive, got n={n}, "
                        f"batch_size={batch_size}")
    n, batch_size = int(n), int(batch_size)
    starts = range(0, n, batch_size)
    chunks, nfes, first = [], [], None
    per_step = progress and len(starts) == 1
    for i, lo in enumerate(tqdm(starts, desc="sampling", unit="batch",
                                disable=not progress or per_step)):
        g = torch.Generator().manual_seed(batch_seed(seed, i))
        x_T = temperature * module.sample_prior(min(batch_size, n - lo), generator=g)
        result = module.sample(x_T=x_T, solver=solver,
                               record_every=int(record_every) if i == 0 else 0,
                               progress=per_step, **(batch_options(lo) if batch_options else {}))
        first = first or result
        chunks.append(result.x.cpu())
        nfes.append(result.nfe)
    return torch.cat(chunks), nfes, first


def sample_task(cfg: DictConfig, loaded: Loaded, out_dir: Path) -> dict:
    """``task=sample``: ``n`` samples in batches, ``samples.npz`` + info + figure."""
    module, datamodule, mcfg, ckpt = (loaded.module, loaded.datamodule, loaded.config,
                                      loaded.checkpoint)
    solver = instantiate(mcfg.solver)
    n, bs, seed = int(cfg.n), int(cfg.batch_size), int(cfg.seed)
    labels, guidance = conditional_request(cfg, module)  # issue 16; checked before sampling
    n = n if labels is None else len(labels)
    temperature = float(cfg.get("temperature", 1.0))
    if not temperature > 0:
        raise UserError(f"temperature must be positive, got {temperature}")
    images = getattr(datamodule, "kind", None) == "images"
    export = cfg.get("export")
    export = str(export).lower() if export is not None else None
    if export not in EXPORTS:
        raise UserError(f"export={export!r}; choose one of "
                        f"{', '.join(str(e).lower() for e in EXPORTS)}")
    if export == "png" and not images:
        raise UserError("export=png writes one PNG per image, but this data set holds points: "
                        f"they are in {SAMPLES_FILE} (array 'samples'). Drop export=png.")
    exact = getattr(module.model, "reset_stats", None)
    if exact is not None:  # the exact field: report what top_k truncation neglected
        exact()
    start = time.perf_counter()
    samples, nfes, first = generate(module, solver, n, batch_size=bs, seed=seed,
                                    temperature=temperature,
                                    record_every=0 if images else int(cfg.record_every),
                                    batch_options=lambda lo: batch_labels(labels, lo, bs,
                                                                          guidance))
    seconds = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)

    # images as uint8 NHWC, the layout FID tools read
    stored = to_uint8_nhwc(samples) if images else samples.numpy()
    np.savez(out_dir / SAMPLES_FILE, samples=stored, nfe=np.array(nfes),
             times=first.times.numpy(), seed=seed, temperature=temperature,
             **({} if labels is None else {"labels": labels.numpy()}))
    info = {"n": n, "batch_size": bs, "seed": seed, "nfe_per_batch": nfes,
            "temperature": temperature, "weights": "ema" if loaded.ema else "raw",
            "wall_seconds": seconds, "checkpoint": str(ckpt) if ckpt else None,
            "run": cfg.run, "field": module.field.describe(),
            "objective": module.objective.describe(), "solver": solver.describe(),
            "grid": first.times.tolist(), **guidance_info(labels, guidance)}
    if exact is not None:
        info["exact"] = module.model.describe()
    (out_dir / "sample_info.json").write_text(json.dumps(info, indent=2))
    (out_dir / "sample_config.yaml").write_text(OmegaConf.to_yaml(mcfg))
    figure = None
    if getattr(datamodule, "kind", None) == "points":
        from unified_ode.viz.points import plot_points_with_trajectories  # matplotlib

        figure = plot_points_with_trajectories(
            out_dir / "samples.png", datamodule.heldout(min(n, 5000)), samples,
            first.trajectory, first.trajectory_times,
            title=f"{module.field.name}: {solver.name} NFE={nfes[0]}, n={n}")
    elif images:
        figure = save_image_grid(out_dir / "samples.png", samples[: int(cfg.get("grid_size", 64))])
        if cfg.get("interpolate", False):
            strip = sample_interpolation(module, solver, cfg, temperature, out_dir)
            figure = f"{figure}, {strip}"
    nfe_text = str(nfes[0]) if len(set(nfes)) == 1 else f"{nfes} (per batch)"
    print(f"NFE: {nfe_text}")
    print(f"wall time: {seconds:.3f} s for {n} samples ({len(nfes)} batch(es)), "
          f"{'EMA' if loaded.ema else 'raw'} weights")
    if export == "png":
        folder = export_png(out_dir / PNG_DIR, stored)
        figure = f"{figure}, {len(stored)} PNGs in {folder}"
    print(f"wrote {out_dir / SAMPLES_FILE}" + (f" and {figure}" if figure else ""))
    return {"out_dir": str(out_dir), "nfe": nfes, "seconds": seconds, "samples": samples}


def export_png(folder: Path, images: np.ndarray) -> Path:
    """Write ``images`` ``(N, H, W, C)`` uint8 as ``folder/000000.png`` ... (grey for C = 1,
    RGB for C = 3), exactly the pixels of ``samples.npz``: what external FID tools read."""
    from unified_ode.viz.images import save_png

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise UserError(f"{folder} already holds files; refusing to overwrite them. Pass "
                        "out_dir=<a new directory>.")
    width = max(6, len(str(len(images) - 1)))
    for i, image in enumerate(tqdm(images, desc="export png", unit="img", leave=False)):
        save_png(folder / f"{i:0{width}d}.png", image)
    return folder


def polar_interpolation(x0: torch.Tensor, x1: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` states from ``x0`` to ``x1`` (each ``(B, *shape)``) -> ``(steps, B, *shape)``.

    Directions are interpolated along the great circle (slerp on the unit sphere) and radii
    geometrically, ``r = r0^(1-a) r1^a``. Every intermediate state is a direction of the sphere
    times a radius between the end radii, so for an isotropic prior (Gaussian, Student-t,
    Cauchy, radial profiles: radius independent of a uniform direction) the path never leaves
    the region the prior puts its mass on: it keeps a Gaussian's typical norm (as plain slerp
    does) and, for heavy-tailed radius laws, moves through the log-radius instead of pulling a
    far-out sample straight through the origin.
    """
    a = torch.linspace(0, 1, steps, dtype=torch.float64)
    f0, f1 = x0.flatten(1).double(), x1.flatten(1).double()
    r0, r1 = f0.norm(dim=1, keepdim=True), f1.norm(dim=1, keepdim=True)
    u0, u1 = f0 / r0.clamp_min(1e-30), f1 / r1.clamp_min(1e-30)
    theta = torch.arccos((u0 * u1).sum(1, keepdim=True).clamp(-1, 1))  # (B, 1)
    out = []
    for ai in a:
        sin = torch.sin(theta)
        w0 = torch.where(sin > 1e-6, torch.sin((1 - ai) * theta) / sin, 1 - ai)
        w1 = torch.where(sin > 1e-6, torch.sin(ai * theta) / sin, ai)
        u = w0 * u0 + w1 * u1
        u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-30)
        r = r0 ** (1 - ai) * r1**ai
        out.append((u * r).view_as(x0).to(x0.dtype))
    return torch.stack(out)


def sample_interpolation(module, solver, cfg: DictConfig, temperature: float,
                         out_dir: Path) -> Path:
    """``interpolate=true``: ``interpolate_pairs`` rows of ``interpolate_steps`` images decoded
    from prior states interpolated between two prior draws (seed ``seed·100003 − 1``, apart from
    the sample batches). Isotropic priors use :func:`polar_interpolation`; a prior that is not
    isotropic (the uniform cube of ``physics=linear``) uses straight lines, which stay inside a
    convex support. Writes ``interpolation.png`` and ``interpolation.npz`` (uint8 NHWC, rows
    one after another)."""
    pairs, steps = int(cfg.get("interpolate_pairs", 4)), int(cfg.get("interpolate_steps", 10))
    if pairs < 1 or steps < 2:
        raise UserError(f"interpolate_pairs must be >= 1 and interpolate_steps >= 2, got "
                        f"{pairs} and {steps}")
    g = torch.Generator().manual_seed(int(cfg.seed) * 100_003 - 1)
    ends = temperature * module.sample_prior(2 * pairs, generator=g)
    x0, x1 = ends[:pairs], ends[pairs:]
    noise = getattr(module.field, "noise", None)
    if noise is not None and not getattr(noise, "isotropic", True):
        a = torch.linspace(0, 1, steps, dtype=x0.dtype, device=x0.device)
        path = torch.stack([(1 - ai) * x0 + ai * x1 for ai in a])
    else:
        path = polar_interpolation(x0, x1, steps)
    path = path.transpose(0, 1).reshape(pairs * steps, *x0.shape[1:])  # row = one pair
    result = module.sample(x_T=path, solver=solver)
    images = to_uint8_nhwc(result.x)
    np.savez(out_dir / "interpolation.npz", samples=images, pairs=pairs, steps=steps,
             nfe=result.nfe)
    return save_image_grid(out_dir / "interpolation.png", images, nrow=steps)
