"""Checkpoints: the run's ``last.ckpt`` and ``best.ckpt``, written atomically, and the RNG state.

* :class:`RunCheckpoint`: Lightning's ``ModelCheckpoint`` with two additions. ``last.ckpt`` is
  always brought up to date when training ends (Lightning only writes it at the end if it was
  never written before). ``monitor="auto"`` monitors the primary metric of the run's
  :class:`~unified_ode.lit.callbacks.SampleMetrics` (``sw@<n>`` for points, ``fid@<n>`` for
  images) and saves whenever a fresh value is computed.
* :class:`AtomicCheckpointIO`: Lightning writes through an fsspec transaction whose temporary
  file lives in the system temp dir; when that is another file system, the final move is a copy
  that an interruption can leave truncated. This plug-in writes ``<name>.tmp<pid>`` next to the
  target, flushes it to disk and renames it into place, so a checkpoint is complete or absent.
* :class:`RNGState`: saves and restores the Python, NumPy and torch RNG states with the
  checkpoint, so a run resumed at an epoch boundary continues bit for bit like an
  uninterrupted one (same data order, same training noise). Resumed mid-epoch, the data
  loader starts a fresh shuffle (Lightning cannot fast-forward a plain DataLoader), so the
  continuation is statistically, not bitwise, the same. Under DDP the states are rank 0's.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file beside the target, ``fsync``, then ``os.replace``."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                f.write(buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` + up-to-date ``last.ckpt`` at the end + ``monitor="auto"``."""

    def __init__(self, *args, monitor: str | None = None, **kwargs):
        self.auto_monitor = monitor == "auto"
        super().__init__(*args, monitor=monitor, **kwargs)

    def _metrics_callback(self, trainer):
        from unified_ode.lit.callbacks import SampleMetrics

        for cb in trainer.callbacks:
            if isinstance(cb, SampleMetrics):
                return cb
        return None

    def setup(self, trainer, pl_module, stage):
        if self.auto_monitor:
            metrics = self._metrics_callback(trainer)
            if metrics is None:
                raise ValueError("RunCheckpoint(monitor='auto') needs a SampleMetrics callback "
                                 "(callbacks.metrics); or set an explicit monitor")
            kind = getattr(trainer.datamodule, "kind", "points")
            self.monitor = metrics.scorer.primary(kind)
        super().setup(trainer, pl_module, stage)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self.auto_monitor or self._should_skip_saving_checkpoint(trainer):
            return
        metrics = self._metrics_callback(trainer)
        if metrics is not None and metrics.last_step == trainer.global_step:
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer, pl_module):
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._last_global_step_saved = trainer.global_step
        super().on_train_end(trainer, pl_module)


class RNGState(L.Callback):
    """Puts the Python, NumPy and torch (CPU, and CUDA when used) RNG states into checkpoints
    and restores them on resume."""

    def state_dict(self) -> dict:
        # plain types only, so checkpoints still load with torch.load(weights_only=True)
        kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 (global)
        state = {"python": random.getstate(),
                 "numpy": (kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)),
                 "torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        # Restored at once (Lightning calls this before it builds the data iterator, which
        # draws its shuffling seed from the global RNG), so the resumed run's draws follow the
        # saved state exactly as the uninterrupted run's do.
        random.setstate(state["python"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state(  # noqa: NPY002 (the global state)
            (kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
