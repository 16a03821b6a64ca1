"""Checkpoints: the run's ``last.ckpt`` and ``best.ckpt``, written atomically, and the RNG state.

* :class:`RunCheckpoint`: Lightning's ``ModelCheckpoint`` (public API only) with three
  guarantees. (1) A run has exactly one ``last.ckpt``, always the newest: the version counter
  is off (no ``last-v1.ckpt``), and the callback's state key names only what its saved state
  means (monitor, file name), so changing ``every_n_train_steps``, ``save_top_k`` ... on resume
  still restores it. (2) ``last.ckpt`` is written at the last optimiser step (``max_steps``),
  from ``on_train_batch_end``: a checkpoint written after the fit loop has stopped (Lightning's
  ``on_train_end`` fallback) records loop progress that Lightning resumes as a half-finished
  epoch, which replays a partial epoch with a fresh shuffle (the cause of non-bitwise resumes
  across epoch boundaries). (3) ``monitor="auto"`` monitors the primary sample metric
  (``val/sw`` for points, ``val/fid`` for images), logged in the validation loop by
  :class:`~unified_ode.lit.callbacks.SampleMetrics`, so ``best.ckpt`` is Lightning's own top-1.
  At start, stale ``*.ckpt.tmp<pid>`` files of dead writers in ``dirpath`` are removed.
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
import re
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

#: ``<name>.ckpt.tmp<pid>``: what :class:`AtomicCheckpointIO` writes before renaming.
TMP_PATTERN = re.compile(r".+\.ckpt\.tmp(\d+)$")


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


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process writes nothing before training starts: a reused pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete ``*.ckpt.tmp<pid>`` files in ``directory`` whose writer (``pid``, on this
    machine) is no longer running; a live writer's file is kept. Returns what was removed."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for path in directory.iterdir():
        m = TMP_PATTERN.match(path.name)
        if m and path.is_file() and not _pid_alive(int(m.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` with one ``last.ckpt`` (newest, also at ``max_steps``),
    ``monitor="auto"`` and stale-temporary clean-up; see the module docstring.
    ``enable_version_counter`` defaults to False."""

    def __init__(self, dirpath=None, filename: str | None = None, monitor: str | None = None,
                 *, every_n_train_steps: int | None = None,
                 enable_version_counter: bool = False, **kwargs):
        self.auto_monitor = monitor == "auto"
        self.every_n_steps = int(every_n_train_steps or 0)
        super().__init__(dirpath=dirpath, filename=filename,
                         monitor=None if self.auto_monitor else monitor,
                         every_n_train_steps=every_n_train_steps,
                         enable_version_counter=enable_version_counter, **kwargs)
        self._final_step_saved: int | None = None

    @property
    def state_key(self) -> str:
        # Lightning's key includes the save frequency, so a resume with another
        # every_n_train_steps dropped this callback's state (and wrote last-v1.ckpt)
        return f"{type(self).__name__}{{'monitor': {self.monitor!r}, " \
               f"'filename': {self.filename!r}}}"

    def setup(self, trainer, pl_module, stage):
        if self.auto_monitor:
            from unified_ode.lit.callbacks import SampleMetrics

            metrics = [cb for cb in trainer.callbacks if isinstance(cb, SampleMetrics)]
            if not metrics:
                raise ValueError("RunCheckpoint(monitor='auto') needs a SampleMetrics callback "
                                 "(callbacks.metrics); or set an explicit monitor")
            self.monitor = metrics[0].primary_for(getattr(trainer.datamodule, "kind", "points"))
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath:
            for path in remove_stale_temporaries(self.dirpath):
                print(f"removed {path.name}, left by an interrupted checkpoint write")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        step = trainer.global_step
        every = self.every_n_steps
        if (self.save_last and not trainer.fast_dev_run and trainer.max_steps > 0
                and step >= trainer.max_steps and not (every >= 1 and step % every == 0)):
            path = self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)
            self.last_model_path = path
            trainer.save_checkpoint(path, self.save_weights_only)
            self._final_step_saved = step

    def on_train_end(self, trainer, pl_module):
        if self._final_step_saved != trainer.global_step:
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
