"""``train.py``: compose, instantiate, fit, and leave a complete run directory behind.

A run directory holds ``.hydra/`` (Hydra's config and overrides), ``config_resolved.yaml``,
``checkpoints/{last,best}.ckpt``, ``figures/``, ``samples.png`` and the loggers' files.
It is never overwritten: a directory with a checkpoint is refused unless ``resume=true``,
which continues it from ``checkpoints/last.ckpt`` (step count, optimiser, scheduler, EMA and
RNG state). ``ckpt_path=<file>`` starts a new run directory from any checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from unified_ode.app.build import build_callbacks, build_loggers, build_module, is_exact
from unified_ode.app.runs import LAST_CKPT
from unified_ode.errors import UserError

RESOLVED_CONFIG = "config_resolved.yaml"
#: Config sections that define the model and its training; a resume must not change them.
RESUME_MUST_MATCH = ("physics", "network", "dataset", "optim", "seed")


def _resume_checkpoint(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint to continue from (or None), after the run-directory guard."""
    last = run_dir / LAST_CKPT
    if bool(cfg.get("resume", False)):
        if not last.is_file():
            raise UserError(f"resume=true but {last} does not exist. Resume a run directory "
                            "that holds checkpoints/last.ckpt (hydra.run.dir=<that dir>), or "
                            "drop resume=true to start a new run.")
        _check_same_config(cfg, run_dir)
        return last
    if last.exists():
        raise UserError(f"{run_dir} already holds a checkpoint ({LAST_CKPT}); refusing to "
                        "overwrite it. Continue it with resume=true, start a new run (the "
                        "default run dir is time-stamped) or pass hydra.run.dir=<a new "
                        "directory>.")
    if cfg.get("ckpt_path"):
        path = Path(str(cfg.ckpt_path))
        if not path.is_file():
            raise UserError(f"ckpt_path={str(path)!r} does not exist.")
        return path
    return None


def _check_same_config(cfg: DictConfig, run_dir: Path) -> None:
    saved_path = run_dir / RESOLVED_CONFIG
    if not saved_path.is_file():
        return
    saved = OmegaConf.load(saved_path)
    now = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    diffs = [key for key in RESUME_MUST_MATCH if not _config_equal(saved.get(key),
                                                                   now.get(key))]
    if diffs:
        raise UserError(f"resume=true: this command's {', '.join(diffs)} config differs from "
                        f"the run's ({saved_path}). Repeat the run's original overrides (see "
                        f"{saved_path}); only trainer, logger and callbacks settings may "
                        "change on resume.")


def _config_equal(a, b) -> bool:
    def plain(x):
        return OmegaConf.to_container(x) if isinstance(x, DictConfig) else x

    return plain(a) == plain(b)


def run_training(cfg: DictConfig) -> dict:
    """Train as ``cfg`` says; returns a summary dict (run dir, steps, seconds, metrics,
    ``objective``: the primary sample metric's last value, or None)."""
    run_dir = Path(cfg.run_dir)
    if is_exact(cfg):
        raise UserError("network=exact is the exact field of the data: it needs no training. "
                        "Sample it with: python sample.py network=exact physics=... dataset=...")
    ckpt_path = _resume_checkpoint(cfg, run_dir)
    import lightning as L  # here, not at the top: `import unified_ode.app.train` stays cheap
    import torch

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    module, datamodule = build_module(cfg)
    if cfg.get("compile", False):
        module.compile = True
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if ckpt_path is None or not (run_dir / RESOLVED_CONFIG).exists():
        (run_dir / RESOLVED_CONFIG).write_text(OmegaConf.to_yaml(resolved))
    print(f"run directory: {run_dir}" + (f" (resuming from {ckpt_path})" if ckpt_path else ""))
    print(f"physics={module.field.name} ({module.field.describe()}), "
          f"network: {module.num_parameters():,} parameters, data shape {datamodule.data_shape}")
    from unified_ode.lit.checkpoint import AtomicCheckpointIO

    trainer = instantiate(cfg.trainer, callbacks=build_callbacks(cfg),
                          logger=build_loggers(cfg) or False, plugins=[AtomicCheckpointIO()])
    for logger in trainer.loggers:
        logger.log_hyperparams(resolved)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    seconds = time.perf_counter() - start
    metrics, objective = {}, None
    for cb in trainer.callbacks:
        metrics.update(getattr(cb, "last_metrics", {}) or {})
        primary = getattr(cb, "primary", None)
        if isinstance(primary, str) and primary in metrics:
            objective = float(metrics[primary])
    for logger in trainer.loggers:
        logger.save()
    print(f"trained {trainer.global_step} steps in {seconds:.1f} s; outputs in {run_dir}")
    return {"run_dir": str(run_dir), "steps": trainer.global_step, "seconds": seconds,
            "metrics": metrics, "objective": objective}
