"""``train.py``: compose, instantiate, fit, and leave a complete run directory behind."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from unified_ode.app.build import build_callbacks, build_loggers, build_module, is_exact
from unified_ode.app.runs import LAST_CKPT
from unified_ode.errors import UserError

RESOLVED_CONFIG = "config_resolved.yaml"


def run_training(cfg: DictConfig) -> dict:
    """Train as ``cfg`` says; returns a summary dict (run dir, steps, seconds, last metrics)."""
    run_dir = Path(cfg.run_dir)
    if is_exact(cfg):
        raise UserError("network=exact is the exact field of the data: it needs no training. "
                        "Sample it with: python sample.py network=exact physics=... dataset=...")
    if (run_dir / LAST_CKPT).exists():
        raise UserError(f"{run_dir} already holds a checkpoint ({LAST_CKPT}); refusing to "
                        "overwrite it. Start a new run (the default run dir is time-stamped) "
                        "or pass hydra.run.dir=<a new directory>.")
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    module, datamodule = build_module(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RESOLVED_CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    print(f"run directory: {run_dir}")
    print(f"physics={module.field.name} ({module.field.describe()}), "
          f"network: {module.num_parameters():,} parameters, data shape {datamodule.data_shape}")
    trainer = instantiate(cfg.trainer, callbacks=build_callbacks(cfg), logger=build_loggers(cfg)
                          or False)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    seconds = time.perf_counter() - start
    metrics = {}
    for cb in trainer.callbacks:
        metrics.update(getattr(cb, "last_metrics", {}) or {})
    print(f"trained {trainer.global_step} steps in {seconds:.1f} s; outputs in {run_dir}")
    return {"run_dir": str(run_dir), "steps": trainer.global_step, "seconds": seconds,
            "metrics": metrics}
