"""Sending scalars, figures and the config to whatever loggers a trainer has.

Callbacks call these instead of ``LightningModule.log`` because they log outside the training
step (and ``log`` is not allowed in every hook). Loggers are rank-zero only in Lightning, so
calling these on every rank is safe.

* scalars: every logger's ``log_metrics``;
* figures (PNG files): TensorBoard ``add_image``, Weights & Biases ``log_image``; the CSV
  logger keeps only the file, which is already in the run directory;
* the config: ``log_hyperparams`` with the resolved config as a nested dict.
"""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing ``metrics.csv``; this one appends to it
    (keeping its header), so a resumed run's log continues the first part."""

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if path.is_file():
            with open(path, newline="") as f:
                self.metrics_keys = list(next(csv.reader(f), []))


class CSVLogger(_LightningCSVLogger):
    """Lightning's ``CSVLogger`` that appends to an existing ``metrics.csv`` (resume)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def log_scalars(trainer: L.Trainer, metrics: dict, step: int) -> None:
    """Send ``metrics`` (name -> float) to every logger of ``trainer`` at ``step``."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)


def log_figure(trainer: L.Trainer, tag: str, path: str | Path, step: int) -> None:
    """Send the PNG at ``path`` to every logger that displays images."""
    if not trainer.is_global_zero:
        return
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    path = Path(path)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            import matplotlib.image as mpimg

            image = mpimg.imread(path)[..., :3]
            logger.experiment.add_image(tag, image, global_step=step, dataformats="HWC")
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[str(path)], step=step)


def log_config(trainer: L.Trainer, config: dict) -> None:
    """``log_hyperparams(config)`` on every logger (config: the resolved config as a dict)."""
    for logger in trainer.loggers:
        logger.log_hyperparams(config)
