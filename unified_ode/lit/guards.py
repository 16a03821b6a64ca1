"""Guards that stop a training run which has gone wrong, before it can spoil its checkpoints.

:class:`NanGuard` stops training with a :class:`NonFiniteTraining` error (a
:class:`~unified_ode.errors.UserError`: ``train.py`` prints one paragraph and exits with
status 2) when the loss or the parameters stop being finite. Checking every step would cost a
device-to-host synchronisation per step, so it checks

* the loss on the steps whose scalars reach the loggers (every ``trainer.log_every_n_steps``),
  where Lightning synchronises anyway, and
* the parameters, in ``on_save_checkpoint``: Lightning calls it after assembling a checkpoint
  and before writing it, so raising there means the NaN state is never written and the last
  good ``last.ckpt`` stays as it was. (A loss that is not finite on a step whose optimiser
  update was skipped, as mixed precision's gradient scaler does, leaves finite parameters: that
  checkpoint is good and is written.)
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from unified_ode.errors import UserError


class NonFiniteTraining(UserError):
    """The loss or the parameters of a training run are NaN or infinite."""


def _finite_parameters(module: torch.nn.Module) -> bool:
    flags = [torch.isfinite(p).all() for p in module.parameters() if p.numel()]
    return bool(torch.stack(flags).all()) if flags else True


class NanGuard(L.Callback):
    """Stop training on a NaN/inf loss (checked on logged steps) or NaN/inf parameters
    (checked before every checkpoint write); see the module docstring."""

    def __init__(self):
        self.last_good_step: int | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        every = int(getattr(trainer, "log_every_n_steps", 1) or 1)
        if trainer.global_step % every:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.strategy.reduce_boolean_decision(bad, all=False):  # every rank stops
            self._stop(trainer, pl_module, f"the training loss is {loss.item()}")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if not _finite_parameters(pl_module):
            self._stop(trainer, pl_module, "the network's parameters are not finite")
        self.last_good_step = int(checkpoint.get("global_step", trainer.global_step))

    def _kept(self, trainer) -> str:
        paths = []
        for cb in trainer.checkpoint_callbacks:
            for path in (getattr(cb, "last_model_path", ""), getattr(cb, "best_model_path", "")):
                if path and Path(path).is_file() and path not in paths:
                    paths.append(path)
        if not paths:
            return "No checkpoint had been written yet."
        when = (f" (the last one at step {self.last_good_step})"
                if self.last_good_step is not None else " (written before this start)")
        return (f"The checkpoints written before it are kept unchanged{when}: "
                f"{', '.join(paths)}; start a new run from one with ckpt_path=<file> and the "
                "changes above.")

    def _stop(self, trainer, pl_module, what: str) -> None:
        lr = None
        if trainer.optimizers:
            lr = trainer.optimizers[0].param_groups[0].get("lr")
        raise NonFiniteTraining(
            f"training stopped at step {trainer.global_step}: {what}. Likely causes: a "
            f"learning rate too high for this network and field (optim.lr, now {lr}): lower "
            "it, or lengthen optim.warmup_steps; a physics.t_min too small for the field (the "
            "loss weight grows without bound as t -> 0); data with NaN/inf values or far from "
            "unit scale; half-precision overflow (trainer.precision=16-mixed: try bf16-mixed "
            "or 32-true); gradient clipping switched off (trainer.gradient_clip_val). "
            f"{self._kept(trainer)}")
