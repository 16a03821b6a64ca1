"""Callbacks: sample-quality metrics and periodic sample figures, for points and images.

* :class:`SampleMetrics`: every ``every_n_steps`` optimiser steps and when training ends, score
  fixed-noise samples (EMA weights) with :class:`~unified_ode.metrics.scoring.SampleScorer`:
  ``sw@<n>``/``mmd@<n>`` for points, ``fid@<n>``/``kid@<n>``(/``is@<n>``) for images, plus
  ``nfe``, ``eval/n_samples`` (over all ranks), ``eval/nonfinite``, ``eval/seconds``. The
  primary metric also goes into ``trainer.callback_metrics`` for checkpointing and sweeps.
* :class:`PeriodicSampling`: every ``every_n_steps`` steps (and at the end) a figure from fixed
  prior noise, so successive figures are comparable: a scatter over the data with trajectories
  for points, a grid for images. Written to ``<out_dir>/figures/step_<k>.png`` (the last one
  also to ``<out_dir>/samples.png``) and sent to the loggers.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from unified_ode.lit.loggers import log_figure, log_scalars
from unified_ode.metrics.scoring import SampleScorer, dist_info


def _due(every: int, step: int, max_steps: int) -> bool:
    """At multiples of ``every`` and at the last step (``max_steps``)."""
    return (every > 0 and step % every == 0) or (max_steps > 0 and step == max_steps)


class SampleMetrics(L.Callback):
    """Sample metrics during training; all arguments after ``every_n_steps`` go to
    :class:`~unified_ode.metrics.scoring.SampleScorer`.

    Parameters
    ----------
    every_n_steps: evaluate at multiples of this many optimiser steps (0: only at the end).
    prior_baseline: for points, log the metrics of the prior samples themselves at the start
        (``prior/sw@<n>``, ``prior/mmd@<n>``): the baseline training must beat.
    """

    def __init__(self, every_n_steps: int = 1000, prior_baseline: bool = True, **scorer):
        super().__init__()
        self.every_n_steps = int(every_n_steps)
        self.prior_baseline = bool(prior_baseline)
        self.scorer = SampleScorer(**scorer)
        self.last_metrics: dict = {}
        self.last_step: int | None = None
        self.history: list[dict] = []

    @property
    def primary(self) -> str | None:
        return self.scorer.primary(self.scorer.kind) if self.scorer.kind else None

    def on_fit_start(self, trainer, pl_module):
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "heldout"):
            raise ValueError("SampleMetrics needs a datamodule with heldout(n) and "
                             "train_tensor()")
        self.scorer.prepare(dm, device=pl_module.device)

    def on_train_start(self, trainer, pl_module):
        if self.prior_baseline and self.scorer.kind == "points" and trainer.global_step == 0:
            rank, world = dist_info()
            from unified_ode.metrics.scoring import chunk_noise

            s = self.scorer
            chunks = [chunk_noise(pl_module, s.n_samples, s.batch_size, s.seed, i)
                      for i in range(rank, -(-s.n_samples // s.batch_size), world)]
            prior = torch.cat(chunks) if chunks else torch.zeros((0, *pl_module.data_shape))
            m = s.score_samples(prior)
            log_scalars(trainer, {f"prior/{k}": v for k, v in m.items()
                                  if not k.startswith("eval/")}, step=0)

    def evaluate(self, trainer, pl_module) -> dict:
        """Score now (every rank must call this: the metrics are synchronised)."""
        metrics, _ = self.scorer.score(pl_module)
        step = trainer.global_step
        log_scalars(trainer, metrics, step=step)
        for name, value in metrics.items():
            trainer.callback_metrics[name] = torch.tensor(float(value))
        self.last_metrics, self.last_step = metrics, step
        self.history.append({"step": step, **metrics})
        if trainer.is_global_zero:
            shown = ", ".join(f"{k} = {v:.4g}" for k, v in metrics.items()
                              if "@" in k or k == "nfe")
            print(f"\n[step {step}] {shown} ({int(metrics['eval/n_samples'])} samples, "
                  f"{metrics['eval/seconds']:.1f} s)", flush=True)
        return metrics

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.fast_dev_run or trainer.global_step == self.last_step:
            return
        if _due(self.every_n_steps, trainer.global_step, trainer.max_steps):
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        if trainer.fast_dev_run:
            return
        if self.last_step != trainer.global_step:
            self.evaluate(trainer, pl_module)
        if trainer.is_global_zero:
            m = self.last_metrics
            shown = ", ".join(f"{k} = {v:.4g}" for k, v in m.items() if "@" in k)
            print(f"final samples (step {self.last_step}): {shown} at NFE {int(m['nfe'])}")


class PeriodicSampling(L.Callback):
    """Figures from fixed prior noise during training.

    Parameters
    ----------
    out_dir: the run directory (figures go to ``<out_dir>/figures/``).
    every_n_steps: a figure at multiples of this many steps (0: only at the end).
    n_points: samples in a 2-D figure; n_images: images in a grid.
    record_every: keep every k-th solver state for the trajectories of 2-D figures.
    seed: seed of the fixed noise.
    final_name: name of the end-of-training copy in ``out_dir`` (null: none).
    """

    def __init__(self, out_dir: str, every_n_steps: int = 1000, n_points: int = 2000,
                 n_images: int = 64, record_every: int = 1, seed: int = 4321,
                 final_name: str | None = "samples.png"):
        super().__init__()
        self.out_dir = Path(out_dir)
        self.every_n_steps = int(every_n_steps)
        self.n_points = int(n_points)
        self.n_images = int(n_images)
        self.record_every = int(record_every)
        self.seed = int(seed)
        self.final_name = final_name
        self.written: list[Path] = []
        self._last_step = None

    def _noise(self, pl_module, n: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        return pl_module.field.sample_prior(n, pl_module.data_shape, generator=g)

    def render(self, trainer, pl_module, path: Path) -> Path:
        kind = getattr(trainer.datamodule, "kind", "points")
        solver = pl_module.solver
        step = trainer.global_step
        if kind == "images":
            from unified_ode.viz.images import save_image_grid

            result = pl_module.sample(x_T=self._noise(pl_module, self.n_images))
            save_image_grid(path, result.x.float().cpu().clamp(-1, 1))
        else:
            from unified_ode.viz.points import plot_points_with_trajectories

            result = pl_module.sample(x_T=self._noise(pl_module, self.n_points),
                                      record_every=self.record_every)
            plot_points_with_trajectories(
                path, trainer.datamodule.heldout(self.n_points), result.x.cpu(),
                result.trajectory, result.trajectory_times,
                title=f"{pl_module.field.name}: step {step}, {type(solver).__name__} "
                      f"NFE={result.nfe}")
        self.written.append(path)
        log_figure(trainer, "samples", path, step)
        return path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if (trainer.fast_dev_run or step == self._last_step or not trainer.is_global_zero
                or not _due(self.every_n_steps, step, trainer.max_steps)):
            return
        self._last_step = step
        self.render(trainer, pl_module, self.out_dir / "figures" / f"step_{step:06d}.png")

    def on_train_end(self, trainer, pl_module):
        if trainer.fast_dev_run or not trainer.is_global_zero:
            return
        step = trainer.global_step
        path = self.out_dir / "figures" / f"step_{step:06d}.png"
        if self._last_step != step:
            self._last_step = step
            self.render(trainer, pl_module, path)
        if self.final_name:
            import shutil

            final = self.out_dir / self.final_name
            shutil.copyfile(path, final)
            print(f"samples after {step} steps: {final}")
