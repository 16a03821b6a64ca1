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
from unified_ode.app.runs import (
    RESOLVED_CONFIG,
    claim_run_dir,
    discard_unused_run_dir,
    read_checkpoint,
    release_run_dir,
    resume_checkpoint,
    trim_log_for_resume,
)
from unified_ode.app.schema import validate_train
from unified_ode.errors import UserError


def run_training(cfg: DictConfig) -> dict:
    """Train as ``cfg`` says; returns a summary dict (run dir, steps, seconds, metrics,
    ``objective``: the primary sample metric's last value, or None)."""
    validate_train(cfg)
    run_dir = Path(cfg.run_dir)
    if is_exact(cfg):
        raise UserError("network=exact is the exact field of the data: it needs no training. "
                        "Sample it with: python sample.py network=exact physics=... dataset=...")
    claim_run_dir(run_dir)  # refused while another process trains in run_dir
    done = False
    try:
        summary = _train(cfg, run_dir)
        done = True
        return summary
    finally:
        release_run_dir(run_dir)
        if not done:
            discard_unused_run_dir(run_dir)  # a failed start leaves no half-made directory


def _train(cfg: DictConfig, run_dir: Path) -> dict:
    ckpt_path = resume_checkpoint(run_dir, cfg)
    resume_step = None
    if ckpt_path is not None:  # a clear error for a file that is not a safe checkpoint
        resume_step = int(read_checkpoint(ckpt_path).get("global_step", 0))
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
    module.remember_config(resolved)  # GenerativeODE.load_from_checkpoint rebuilds from it
    if ckpt_path is None or not (run_dir / RESOLVED_CONFIG).exists():
        (run_dir / RESOLVED_CONFIG).write_text(OmegaConf.to_yaml(resolved))
    print(f"run directory: {run_dir}" + (f" (resuming from {ckpt_path})" if ckpt_path else ""))
    print(f"physics={module.field.name} ({module.field.describe()}), "
          f"network: {module.num_parameters():,} parameters, data shape {datamodule.data_shape}")
    from unified_ode.lit.checkpoint import AtomicCheckpointIO
    from unified_ode.lit.loggers import CSVLogger

    trainer = instantiate(cfg.trainer, callbacks=build_callbacks(cfg),
                          logger=build_loggers(cfg) or False, plugins=[AtomicCheckpointIO()])
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger):  # rows of a killed start that this one writes again
            start_step = -1 if resume_step is None else resume_step
            dropped = trim_log_for_resume(Path(logger.log_dir) / "metrics.csv", start_step)
            if dropped:
                print(f"metrics.csv: {dropped} rows after step {max(start_step, 0)} of an "
                      "interrupted start removed (they are logged again)")
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
    if trainer.is_global_zero:
        print(training_summary(trainer.global_step, resume_step, seconds, run_dir))
    return {"run_dir": str(run_dir), "steps": trainer.global_step, "seconds": seconds,
            "metrics": metrics, "objective": objective}


def training_summary(step: int, resume_step: int | None, seconds: float, run_dir: Path) -> str:
    """The last line of a training run: steps trained (new ones when resumed), time, outputs."""
    if resume_step is None:
        return f"trained {step} steps in {seconds:.1f} s; outputs in {run_dir}"
    if step <= resume_step:
        return (f"the checkpoint was already at step {resume_step} (trainer.max_steps reached): "
                f"nothing trained. Sample or score it with `python sample.py run={run_dir}` "
                f"(task=evaluate for metrics); raise trainer.max_steps to train on.")
    return (f"trained steps {resume_step}..{step} ({step - resume_step} new) in {seconds:.1f} s; "
            f"outputs in {run_dir}")
