"""Progress and quiet: one bar over the optimiser steps, a bar per evaluation, fewer log lines.

* :class:`StepProgressBar`: training is step-based (``max_steps``), so the bar counts optimiser
  steps from the resumed step to ``max_steps`` ("train 1500/3000"), not batches of an epoch
  ("Epoch 0: 0/97"); the loss is shown beside it. Each evaluation (the validation loop's
  sampling batches) gets a transient second bar, so end-of-training scoring does not look
  stuck. Rank 0 only; one final line, not a duplicated bar.
* :func:`quiet_lightning_logs`: drops Lightning's "litlogger" tip from its log output, and
  warnings that say nothing about the user's run: ``IterableDataset`` with ``__len__`` (the
  prior draws know their length exactly, with no workers), the empty validation list of a run
  without sample metrics, ``_pytree``'s deprecation notice, and "fewer training batches than
  the logging interval" (logging counts steps across epochs here).
"""

from __future__ import annotations

import logging
import sys
import warnings

from lightning.pytorch.callbacks import ProgressBar


class StepProgressBar(ProgressBar):
    """A tqdm bar over optimiser steps; ``refresh_rate``: redraw every this many steps
    (0: no bar)."""

    def __init__(self, refresh_rate: int = 25):
        super().__init__()
        self.refresh_rate = int(refresh_rate)
        self._enabled = self.refresh_rate > 0
        self._train = None
        self._val = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = self.refresh_rate > 0

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def _on(self, trainer) -> bool:
        return self._enabled and trainer.is_global_zero

    @staticmethod
    def _tqdm(**kwargs):
        from tqdm.auto import tqdm

        return tqdm(file=sys.stderr, dynamic_ncols=True, **kwargs)

    def on_train_start(self, trainer, pl_module):
        if not self._on(trainer):
            return
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self._train = self._tqdm(desc="train", total=total, initial=trainer.global_step,
                                 unit="step", smoothing=0.1, leave=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        bar = self._train
        if bar is None or trainer.global_step == bar.n:
            return
        if (trainer.global_step % self.refresh_rate == 0
                or trainer.global_step == trainer.max_steps):
            bar.update(trainer.global_step - bar.n)
            loss = self.get_metrics(trainer, pl_module).get("train/loss")
            if loss is not None:
                bar.set_postfix_str(f"loss={float(loss):.4g}", refresh=False)
            bar.refresh()

    def on_validation_start(self, trainer, pl_module):
        if not self._on(trainer) or trainer.sanity_checking:
            return
        total = sum(trainer.num_val_batches) if isinstance(trainer.num_val_batches, list) \
            else trainer.num_val_batches
        self._val = self._tqdm(desc=f"sampling for metrics (step {trainer.global_step})",
                               total=int(total) or None, unit="batch", leave=False,
                               position=1 if self._train is not None else 0)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0):
        if self._val is not None:
            self._val.update(1)

    def on_validation_end(self, trainer, pl_module):
        if self._val is not None:
            self._val.close()
            self._val = None

    def on_train_end(self, trainer, pl_module):
        if self._train is not None:
            self._train.update(trainer.global_step - self._train.n)
            self._train.close()
            self._train = None

    def on_exception(self, trainer, pl_module, exception):
        for bar in (self._val, self._train):
            if bar is not None:
                bar.close()
        self._val = self._train = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_train"] = state["_val"] = None  # tqdm bars do not pickle (ddp_spawn)
        return state


class _DropLitloggerTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def quiet_lightning_logs() -> None:
    """Remove the "litlogger" tip that Lightning logs when a Trainer is built and the
    warnings named in the module docstring (idempotent)."""
    warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
    # the empty validation list of a run without sample metrics (GenerativeODE.val_dataloader)
    warnings.filterwarnings("ignore", message=r"Total length of `list` across ranks is zero")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # training is step-based: log_every_n_steps counts optimiser steps across epochs, so a data
    # set with fewer batches per epoch than the interval is still logged (e.g. digits: 25
    # batches of 64, a row every 50 steps)
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is "
                            r"smaller than the logging interval")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLitloggerTip) for f in logger.filters):
            logger.addFilter(_DropLitloggerTip())
