"""Tiny training runs shared by the training-service tests (EMA, resume, metrics, DDP,
loggers, sweeps, distillation): their overrides, the environment guard of an in-process
``run_training``, and readers of a run directory (``logs/metrics.csv``,
``checkpoints/last.ckpt``)."""

from __future__ import annotations

import contextlib
import csv
import os
from pathlib import Path

import torch

# Subprocess runs: two steps of a tiny MLP on the 2-D checkerboard, metrics at the end only.
TINY = ["trainer.max_steps=2", "dataset.n_train=128", "dataset.n_heldout=64",
        "dataset.batch_size=64", "network.width=8", "network.depth=1", "solver.steps=2",
        "callbacks.metrics.n_samples=64", "callbacks.metrics.batch_size=64",
        "callbacks.checkpoint.every_n_train_steps=0",
        "~callbacks.figures", "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1"]

# In-process runs (``build_module``, ``run_training``): a width-16 MLP, 4 steps an epoch.
MODULE_TINY = ["dataset.n_train=256", "dataset.n_heldout=64", "dataset.batch_size=64",
               "network.width=16", "network.depth=1", "solver.steps=3"]

# 4 steps per epoch (256 points, batches of 64): the interruption at N = 4 is an epoch boundary,
# where resuming is bitwise exact. Metrics every 4 steps; EMA with a short half-life and a
# strong EDM ramp, so that a lost image count or shadow would show.
N = 4
RESUME_TINY = MODULE_TINY + [
    "callbacks.metrics.n_samples=64", "callbacks.metrics.batch_size=64",
    f"trainer.val_check_interval={N}", f"callbacks.checkpoint.every_n_train_steps={N}",
    "callbacks.ema.half_life_images=300", "callbacks.ema.rampup_ratio=1.0",
    "~callbacks.figures", "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1"]


@contextlib.contextmanager
def restored_environment():
    """``run_training`` seeds through Lightning, which exports PL_* variables; undo that."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict], name: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every row that has ``name``."""
    return [(int(r["step"]), float(r[name])) for r in rows if r.get(name)]


def load_ckpt(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)
