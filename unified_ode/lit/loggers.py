"""Loggers and what the callbacks send to them (scalars, figures, constants, a final summary).

Callbacks call these helpers where ``LightningModule.log`` is not allowed (``on_train_start``,
``on_train_end``) or does not fit (figures, hyper-parameters). Loggers are rank-zero only in
Lightning, so calling these on every rank is safe.

* :class:`CSVLogger`: ``<save_dir>/<name>/metrics.csv`` (one row per logged step, a ``step``
  column) and ``hparams.yaml``; a resumed run appends to the existing file.
* :func:`log_scalars`: every logger's ``log_metrics``;
* :func:`log_figure`: PNG files to TensorBoard (``add_image``) and Weights & Biases
  (``log_image``); the CSV logger keeps only the file, already in the run directory;
* :func:`log_hyperparams`: constants of the run (config, sample count, NFE) as hyper-parameters;
* :func:`log_summary`: at the end, the final metrics: TensorBoard's HParams tab (the flattened
  config beside the final metrics, as ``final/<name>``), the W&B run summary, and
  ``summary.yaml`` beside the CSV.
"""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import yaml
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only


class CSVLogger(Logger):
    """Metrics to ``<save_dir>/<name>/metrics.csv``, appended to when the file exists (a
    resumed run continues its log); hyper-parameters to ``hparams.yaml`` beside it.

    Rows are buffered and written by :meth:`save` (which Lightning calls after logging); a row
    with a new column rewrites the file once with the wider header.

    Parameters
    ----------
    save_dir: the run directory. name: sub-folder (``"logs"``). version: ignored (kept for
        configs written for Lightning's ``CSVLogger``).
    """

    def __init__(self, save_dir: str, name: str = "logs", version: str | int | None = ""):
        super().__init__()
        self._root = Path(save_dir)
        self._name = name
        self._rows: list[dict] = []
        self._hparams: dict = {}

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return str(self._root)

    @property
    def root_dir(self) -> str:
        return str(self._root)

    @property
    def log_dir(self) -> str:
        return str(self._root / self._name)

    @property
    def metrics_file(self) -> Path:
        return Path(self.log_dir) / "metrics.csv"

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        row = {"step": step}
        row.update({k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()})
        self._rows.append(row)

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        self._hparams.update(dict(params) if not isinstance(params, dict) else params)
        Path(self.log_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.log_dir) / "hparams.yaml").write_text(
            yaml.safe_dump(_plain(self._hparams), sort_keys=False))

    @rank_zero_only
    def save(self) -> None:
        if not self._rows:
            return
        path = self.metrics_file
        path.parent.mkdir(parents=True, exist_ok=True)
        header: list[str] = []
        if path.is_file() and path.stat().st_size:
            with open(path, newline="") as f:
                header = next(csv.reader(f), [])
        new = [k for row in self._rows for k in row if k not in header]
        new = list(dict.fromkeys(new))
        if header and not new:
            with open(path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=header).writerows(self._rows)
        else:
            old = []
            if header:
                with open(path, newline="") as f:
                    old = list(csv.DictReader(f))
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=header + new)
                writer.writeheader()
                writer.writerows(old + self._rows)
            tmp.replace(path)
        self._rows = []

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()


def _plain(obj):
    """Plain YAML-able containers (tuples to lists, unknown objects to strings)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def log_scalars(trainer: L.Trainer, metrics: dict, step: int) -> None:
    """Send ``metrics`` (name -> float) to every logger of ``trainer`` at ``step``."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)


def log_hyperparams(trainer: L.Trainer, params: dict) -> None:
    """``log_hyperparams(params)`` on every logger (constants of the run)."""
    for logger in trainer.loggers:
        logger.log_hyperparams(params)


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


def flatten(config: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}} -> {"a/b": 1}``; lists and None become strings (TensorBoard's HParams
    take numbers, strings and booleans only)."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}/"))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def log_summary(trainer: L.Trainer, final: dict, constants: dict) -> None:
    """The run's final metrics ``final`` (``val/sw`` -> value) and ``constants`` (sample
    count, NFE, step): TensorBoard HParams (flattened composed config + ``final/<metric>``),
    the W&B run summary, and ``<csv log dir>/summary.yaml``."""
    if not trainer.is_global_zero:
        return
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    config = dict((trainer.lightning_module.hparams or {}).get("config") or {})
    summary = {**constants, **{f"final/{k.split('/', 1)[-1]}": v for k, v in final.items()}}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams({**flatten(config), **constants},
                                   metrics={k: v for k, v in summary.items()
                                            if k.startswith("final/")})
        elif isinstance(logger, WandbLogger):
            logger.experiment.summary.update({**final, **summary})
        elif isinstance(logger, CSVLogger):
            Path(logger.log_dir).mkdir(parents=True, exist_ok=True)
            (Path(logger.log_dir) / "summary.yaml").write_text(
                yaml.safe_dump(_plain(summary), sort_keys=False))
