"""Callbacks: sample-quality evaluation and the samples/field-lines figure for point data."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch

from unified_ode.metrics.points import mmd_rbf, sliced_wasserstein
from unified_ode.viz import plot_points_with_trajectories


def log_scalars(trainer: L.Trainer, metrics: dict, step: int) -> None:
    """Send ``metrics`` to every logger of ``trainer`` at ``step`` (works outside training
    hooks too, where ``LightningModule.log`` is not allowed)."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)


class PointSampleEvaluation(L.Callback):
    """Every ``every_n_steps`` and at the end of training: sample from fixed prior noise, score
    the samples against held-out data (sliced W2 and MMD), log them with the NFE, and at the
    end write ``samples.png`` (samples over data, with trajectories) into ``out_dir``.

    At the start it logs the same metrics for the prior samples themselves (``prior/...``), the
    baseline that training must beat. Metric names: ``sample/sw``, ``sample/mmd``,
    ``sample/nfe``, ``sample/seconds``.
    """

    def __init__(self, out_dir: str, every_n_steps: int = 0, n_samples: int = 2000,
                 seed: int = 1234, record_every: int = 1, figure_name: str = "samples.png"):
        super().__init__()
        self.out_dir = Path(out_dir)
        self.every_n_steps = int(every_n_steps)
        self.n_samples = int(n_samples)
        self.seed = int(seed)
        self.record_every = int(record_every)
        self.figure_name = figure_name
        self.last_metrics: dict = {}

    def _noise(self, pl_module) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        return pl_module.field.sample_prior(self.n_samples, pl_module.data_shape,
                                            generator=g).to(pl_module.device)

    def _reference(self, trainer):
        return trainer.datamodule.heldout(self.n_samples)

    def on_train_start(self, trainer, pl_module):
        if trainer.datamodule is None or not hasattr(trainer.datamodule, "heldout"):
            raise ValueError("PointSampleEvaluation needs a datamodule with heldout(n)")
        prior = self._noise(pl_module).cpu()
        ref = self._reference(trainer)
        log_scalars(trainer, {"prior/sw": sliced_wasserstein(prior, ref),
                              "prior/mmd": mmd_rbf(prior, ref)}, step=0)

    def evaluate(self, trainer, pl_module, *, record: bool = False) -> dict:
        solver = pl_module.solver
        old_record = solver.record_every
        solver.record_every = self.record_every if record else 0
        try:
            start = time.perf_counter()
            result = pl_module.sample(x_T=self._noise(pl_module))
            seconds = time.perf_counter() - start
        finally:
            solver.record_every = old_record
        ref = self._reference(trainer)
        x = result.x.cpu()
        finite = torch.isfinite(x).all(dim=1)
        ok = x[finite]
        metrics = {"sample/sw": sliced_wasserstein(ok, ref) if len(ok) else float("nan"),
                   "sample/mmd": mmd_rbf(ok, ref) if len(ok) > 1 else float("nan"),
                   "sample/nfe": float(result.nfe), "sample/seconds": seconds,
                   "sample/nonfinite": float((~finite).sum())}
        log_scalars(trainer, metrics, step=trainer.global_step)
        self.last_metrics = metrics
        return {"metrics": metrics, "result": result, "reference": ref}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every_n_steps > 0 and step % self.every_n_steps == 0 and step < trainer.max_steps:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        out = self.evaluate(trainer, pl_module, record=True)
        result, m = out["result"], out["metrics"]
        path = plot_points_with_trajectories(
            self.out_dir / self.figure_name, out["reference"], result.x, result.trajectory,
            result.trajectory_times,
            title=f"{pl_module.field.name}: {trainer.global_step} steps, "
                  f"{type(pl_module.solver).__name__} NFE={result.nfe}, "
                  f"sliced W2={m['sample/sw']:.3f}")
        for logger in trainer.loggers:
            logger.save()
        print(f"\nfinal samples: sliced W2 = {m['sample/sw']:.4f}, MMD = {m['sample/mmd']:.5f} "
              f"at NFE {int(m['sample/nfe'])}; figure: {path}")
