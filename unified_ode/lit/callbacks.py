"""Callbacks: sample-quality metrics (in Lightning's validation loop) and sample figures.

* :class:`SampleMetrics`: attaches fixed prior draws as the module's validation data
  (:class:`PriorDraws`); every validation (``trainer.val_check_interval`` training batches, and
  at ``max_steps``) integrates them with the EMA weights and scores the samples with
  :class:`~unified_ode.metrics.scoring.SampleScorer`. Logged with ``LightningModule.log`` under
  stable names, ``val/sw`` and ``val/mmd`` for points, ``val/fid``, ``val/kid`` (``val/is``)
  for images, plus ``val/nonfinite``; for class-conditional data also per class,
  ``val/sw_class/<c>`` or ``val/fid_class/<c>`` and ``val/kid_class/<c>`` (one series per class,
  so dashboards overlay them under one prefix), and ``val/label_accuracy`` (see
  :mod:`unified_ode.metrics.scoring`); so ``ModelCheckpoint(monitor="val/sw")``, early stopping
  and sweepers work unmodified. The sample count and the NFE are constants of the run: they go
  to the loggers' hyper-parameters once (``eval/n_samples``, ``eval/nfe``), not into names or
  time series. The prior's own metrics (``prior/sw``, ``prior/mmd``) are logged once at step 0.
* :class:`PeriodicSampling`: after a validation, a figure of the samples just scored (no second
  solve; only 64 trajectories are integrated again for 2-D figures): a scatter over the data
  with trajectories for points, a grid for images. Written to ``<out_dir>/figures/step_<k>.png``
  (the last one also to ``<out_dir>/samples.png``) and sent to the loggers.

Validation is RNG-neutral: the prior draws have their own seeds, the data loader its own
generator, and scoring runs under ``torch.random.fork_rng``, so a run's training draws do not
depend on when (or whether) it was evaluated, which keeps resumes bit-exact.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import lightning as L
import torch

from unified_ode.lit.loggers import log_figure, log_hyperparams, log_scalars, log_summary
from unified_ode.metrics.scoring import SampleScorer, chunk_labels, chunk_noise, dist_info

#: Prefix of the sample metrics' names (``val/sw``, ``val/fid``, ...).
PREFIX = "val/"


def stable_name(name: str) -> str:
    """The logged name of a :class:`SampleScorer` metric: ``sw@2k -> val/sw``,
    ``fid_class/3@2k -> val/fid_class/3``, ``eval/nonfinite -> val/nonfinite``."""
    return PREFIX + name.split("@", 1)[0].removeprefix("eval/")


def is_class_metric(name: str) -> bool:
    """Whether a logged name is one class's score (``val/fid_class/3``)."""
    return "_class/" in name


class PriorDraws(torch.utils.data.IterableDataset):
    """The fixed prior noise of ``n`` samples in chunks of ``batch_size`` (chunk ``i`` from seed
    ``(seed, i)``, :func:`~unified_ode.metrics.scoring.chunk_noise`); under DDP rank ``r`` of
    ``W`` yields chunks ``i ≡ r (mod W)``, so the scored set does not depend on ``W``.
    Each item is a batch ``(b, *data_shape)``; for a class-conditional model
    (``num_classes > 0``) a pair ``(batch, labels (b,))``, sample ``j`` of the set drawn for
    class ``j mod num_classes`` (:func:`~unified_ode.metrics.scoring.chunk_labels`)."""

    def __init__(self, module, n: int, batch_size: int, seed: int, num_classes: int = 0):
        self.module, self.n, self.batch_size, self.seed = module, n, batch_size, seed
        self.num_classes = int(num_classes)

    def _indices(self) -> range:
        rank, world = dist_info()
        return range(rank, -(-self.n // self.batch_size), world)

    def __len__(self) -> int:
        return len(self._indices())

    def __iter__(self):
        for i in self._indices():
            noise = chunk_noise(self.module, self.n, self.batch_size, self.seed, i)
            if self.num_classes:
                yield noise, chunk_labels(self.n, self.batch_size, self.num_classes, i)
            else:
                yield noise

    def everything(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """All of this rank's draws at once: ``(noise, labels or None)``."""
        items = list(self)
        if not items:
            return torch.zeros((0, *self.module.data_shape)), None
        if not self.num_classes:
            return torch.cat(items), None
        return torch.cat([a for a, _ in items]), torch.cat([b for _, b in items])


def draws_for(module, scorer) -> PriorDraws:
    """The :class:`PriorDraws` of ``scorer``'s set (labelled when the data are
    class-conditional)."""
    return PriorDraws(module, scorer.n_samples, scorer.batch_size, scorer.seed,
                      num_classes=scorer.num_classes)


def _fork_rng(device: torch.device):
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


class SampleMetrics(L.Callback):
    """Sample metrics in the validation loop; all arguments but ``prior_baseline`` go to
    :class:`~unified_ode.metrics.scoring.SampleScorer` (``n_samples``, ``batch_size``,
    ``seed``, ...). How often: ``trainer.val_check_interval`` (training batches; with
    ``check_val_every_n_epoch=None``), and always once at ``trainer.max_steps``.

    Parameters
    ----------
    prior_baseline: for points, log the metrics of the prior samples themselves at step 0
        (``prior/sw``, ``prior/mmd``): the baseline training must beat.

    After each evaluation: ``last_metrics`` (stable names, plus ``eval/nfe``,
    ``eval/n_samples``, ``eval/seconds``), ``last_step``, ``last_samples`` (this rank's
    samples, CPU), ``history`` (one dict per evaluation).
    """

    def __init__(self, prior_baseline: bool = True, **scorer):
        super().__init__()
        self.prior_baseline = bool(prior_baseline)
        self.scorer = SampleScorer(**scorer)
        self.last_metrics: dict = {}
        self.last_step: int | None = None
        self.last_samples: torch.Tensor | None = None
        self.history: list[dict] = []
        self._chunks: list[torch.Tensor] = []
        self._nfe = 0
        self._summary_logged = False
        self._t0 = 0.0

    @property
    def primary(self) -> str | None:
        """The name of the metric that ranks checkpoints and sweeps (lower is better)."""
        return None if self.scorer.kind is None else self.primary_for(self.scorer.kind)

    def primary_for(self, kind: str) -> str:
        """The primary metric's logged name for data of ``kind``: ``val/sw`` for points,
        ``val/fid`` for images (the scorer's primary metric, under its stable name)."""
        return stable_name(self.scorer.primary(kind))

    def dataloader(self, pl_module):
        """The validation data: :class:`PriorDraws` (its own generator: no global draws);
        none under ``fast_dev_run`` (a check of the training loop, not of the samples)."""
        if pl_module.trainer.fast_dev_run:
            return []
        s = self.scorer
        return torch.utils.data.DataLoader(
            draws_for(pl_module, s), batch_size=None,
            generator=torch.Generator().manual_seed(s.seed))

    # --- set-up --------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage):
        pl_module.evaluation = self

    def on_fit_start(self, trainer, pl_module):
        if trainer.fast_dev_run:
            return
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "heldout"):
            raise ValueError("SampleMetrics needs a datamodule with heldout(n) and "
                             "train_tensor()")
        chunks = -(-self.scorer.n_samples // self.scorer.batch_size)
        if chunks < trainer.world_size:
            raise ValueError(f"callbacks.metrics: {self.scorer.n_samples} samples in batches "
                             f"of {self.scorer.batch_size} are {chunks} chunk(s), fewer than "
                             f"the {trainer.world_size} processes; lower batch_size to at most "
                             f"{self.scorer.n_samples // trainer.world_size}.")
        self.scorer.prepare(dm, device=pl_module.device)

    def on_train_start(self, trainer, pl_module):
        if self.prior_baseline and self.scorer.kind == "points" and trainer.global_step == 0:
            prior, labels = draws_for(pl_module, self.scorer).everything()
            with _fork_rng(pl_module.device):
                m = self.scorer.score_samples(prior, labels)
            log_scalars(trainer, {f"prior/{stable_name(k)[len(PREFIX):]}": v
                                  for k, v in m.items() if not k.startswith("eval/")}, step=0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # at max_steps, ask for a last validation (Lightning validates when a run is asked
        # to stop; the loop ends at max_steps anyway)
        if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            trainer.should_stop = True

    # --- the validation loop -------------------------------------------------------------
    def on_validation_epoch_start(self, trainer, pl_module):
        self._chunks, self._labels, self._nfe = [], [], 0
        self._t0 = time.perf_counter()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0):
        self._chunks.append(outputs.x.detach().cpu())
        if isinstance(batch, (list, tuple)):  # (prior draws, labels): conditional samples
            self._labels.append(batch[1].detach().cpu())
        self._nfe = outputs.nfe

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        samples = (torch.cat(self._chunks) if self._chunks
                   else torch.zeros((0, *pl_module.data_shape)))
        labels = None
        if self.scorer.num_classes:
            labels = torch.cat(self._labels) if self._labels else torch.zeros(0, dtype=torch.long)
        with _fork_rng(pl_module.device):
            raw = self.scorer.score_samples(samples, labels)
        step = trainer.global_step
        metrics = {stable_name(k): float(v) for k, v in raw.items()
                   if k != "eval/n_samples"}
        # log(): into trainer.callback_metrics for ModelCheckpoint/EarlyStopping/sweeps (the
        # values are already global); the loggers get them at the step they belong to (Lightning
        # would file them under the step before)
        pl_module.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=False, logger=False)
        log_scalars(trainer, metrics, step=step)
        constants = {"eval/n_samples": int(raw["eval/n_samples"]), "eval/nfe": int(self._nfe)}
        if not self._summary_logged:
            log_hyperparams(trainer, constants)
            self._summary_logged = True
        seconds = time.perf_counter() - self._t0
        self.last_metrics = {**metrics, **constants, "eval/seconds": seconds}
        self.last_step, self.last_samples = step, samples
        self.history.append({"step": step, **self.last_metrics})
        self._chunks = []
        if trainer.is_global_zero:
            shown = ", ".join(f"{k} = {v:.4g}" for k, v in metrics.items()
                              if k != f"{PREFIX}nonfinite" and not is_class_metric(k))
            print(f"\n[step {step}] {shown} ({constants['eval/n_samples']} samples, NFE "
                  f"{constants['eval/nfe']}, {seconds:.1f} s)", flush=True)

    def on_train_end(self, trainer, pl_module):
        if trainer.fast_dev_run or not self.last_metrics:
            return
        m = self.last_metrics
        log_summary(trainer, {k: v for k, v in m.items() if k.startswith(PREFIX)},
                    {"eval/n_samples": m["eval/n_samples"], "eval/nfe": m["eval/nfe"],
                     "eval/step": self.last_step})
        if trainer.is_global_zero:
            shown = ", ".join(f"{k} = {v:.4g}" for k, v in m.items()
                              if k.startswith(PREFIX) and k != f"{PREFIX}nonfinite"
                              and not is_class_metric(k))
            print(f"final samples (step {self.last_step}): {shown} at NFE {m['eval/nfe']}")


class PeriodicSampling(L.Callback):
    """Figures of the samples the metrics just scored, after every ``every_n_evaluations``-th
    validation and at the end of training.

    Parameters
    ----------
    out_dir: the run directory (figures go to ``<out_dir>/figures/``).
    every_n_evaluations: a figure after every this-many validations (0: only at the end).
    n_images: images in a grid. n_trajectories: paths drawn in a 2-D figure (integrated again
        from the first prior draws, with every ``record_every``-th solver state kept).
    n_points: samples of the figure drawn at the end when no metrics callback provides any.
    seed: seed of that figure's noise.
    final_name: name of the end-of-training copy in ``out_dir`` (null: none).
    """

    def __init__(self, out_dir: str, every_n_evaluations: int = 1, n_images: int = 64,
                 n_trajectories: int = 64, record_every: int = 1, n_points: int = 2000,
                 seed: int = 4321, final_name: str | None = "samples.png"):
        super().__init__()
        self.out_dir = Path(out_dir)
        self.every_n_evaluations = int(every_n_evaluations)
        self.n_images = int(n_images)
        self.n_trajectories = int(n_trajectories)
        self.record_every = int(record_every)
        self.n_points = int(n_points)
        self.seed = int(seed)
        self.final_name = final_name
        self.written: list[Path] = []
        self._evaluations = 0
        self._last_step = None

    def _trajectories(self, pl_module, x_T: torch.Tensor):
        """A few sample paths: ``(trajectory (K, n, 2), times (K,))``."""
        result = pl_module.sample(x_T=x_T, record_every=self.record_every)
        return result.trajectory, result.trajectory_times, result.nfe

    def render(self, trainer, pl_module, samples: torch.Tensor, x_T: torch.Tensor,
               path: Path) -> Path:
        """Write the figure of ``samples`` (paths from ``x_T`` for points) to ``path``."""
        kind = getattr(trainer.datamodule, "kind", "points")
        step = trainer.global_step
        if kind == "images":
            from unified_ode.viz.images import save_image_grid

            # class-conditional samples come class-interleaved: one column per class
            ev = pl_module.evaluation
            classes = ev.scorer.num_classes if ev is not None and samples is ev.last_samples \
                else 0
            save_image_grid(path, samples[: self.n_images].float().cpu().clamp(-1, 1),
                            nrow=classes or None)
        else:
            from unified_ode.viz.points import plot_points_with_trajectories

            traj, times, nfe = self._trajectories(pl_module, x_T[: self.n_trajectories])
            plot_points_with_trajectories(
                path, trainer.datamodule.heldout(len(samples)), samples.cpu(), traj, times,
                title=f"{pl_module.field.name}: step {step}, {type(pl_module.solver).__name__} "
                      f"NFE={nfe}")
        self.written.append(path)
        log_figure(trainer, "samples", path, step)
        return path

    def _path(self, step: int) -> Path:
        return self.out_dir / "figures" / f"step_{step:06d}.png"

    def on_validation_end(self, trainer, pl_module):
        ev = pl_module.evaluation
        if (trainer.sanity_checking or trainer.fast_dev_run or not trainer.is_global_zero
                or ev is None or ev.last_step != trainer.global_step
                or ev.last_samples is None or not len(ev.last_samples)):
            return
        self._evaluations += 1
        final = trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
        every = self.every_n_evaluations
        if final or (every > 0 and self._evaluations % every == 0):
            s = ev.scorer
            x_T = chunk_noise(pl_module, s.n_samples, s.batch_size, s.seed, 0)
            self._last_step = trainer.global_step
            self.render(trainer, pl_module, ev.last_samples, x_T, self._path(self._last_step))

    def on_train_end(self, trainer, pl_module):
        if trainer.fast_dev_run or not trainer.is_global_zero:
            return
        step = trainer.global_step
        if self._last_step != step:  # no metrics at the end: sample a figure's worth
            n = self.n_images if getattr(trainer.datamodule, "kind", "") == "images" \
                else self.n_points
            x_T = pl_module.field.sample_prior(n, pl_module.data_shape,
                                               generator=torch.Generator().manual_seed(self.seed))
            samples = pl_module.sample(x_T=x_T).x
            self._last_step = step
            self.render(trainer, pl_module, samples, x_T, self._path(step))
        if self.final_name:
            final = self.out_dir / self.final_name
            shutil.copyfile(self._path(step), final)
            print(f"samples after {step} steps: {final}")
