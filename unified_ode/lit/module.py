"""The LightningModule: one field, one model, one objective, one solver.

The module knows about training loops, devices and loggers; the physics it delegates to the
field (kernel, prior, drift), the network to the model (a preconditioned network or the exact
posterior) and integration to the solver.

Loading a trained run in Python::

    module = GenerativeODE.load_from_checkpoint("outputs/<run>/checkpoints/last.ckpt")
    x = module.sample(1000).x          # EMA weights when the checkpoint has them

This works because ``train.py`` stores the composed, resolved config in every checkpoint
(``checkpoint["hyper_parameters"]["config"]``, through :meth:`GenerativeODE.remember_config`),
from which :meth:`GenerativeODE.load_from_checkpoint` rebuilds the module exactly as
``train.py`` built it, then loads the weights.

Sample metrics run in Lightning's validation loop: the "validation data" are batches of fixed
prior draws (:meth:`GenerativeODE.val_dataloader`, provided when a
:class:`~unified_ode.lit.callbacks.SampleMetrics` callback is attached), and
:meth:`GenerativeODE.validation_step` integrates each batch to samples.
"""

from __future__ import annotations

import contextlib
import functools
import math
from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from unified_ode.parametrisation import ProbabilityFlow
from unified_ode.solvers.base import Solver, SolveResult

#: Where :meth:`GenerativeODE.remember_config` keeps the composed config in a checkpoint.
CONFIG_KEY = "config"
#: Values that ``nn.Module.__setattr__`` can only store as plain attributes (never a
#: parameter, buffer or submodule): :meth:`GenerativeODE.__setattr__`'s fast path.
_PLAIN_TYPES = frozenset({str, int, float, bool, type(None)})


class GenerativeODE(L.LightningModule):
    """Trains ``model`` on ``field`` with ``objective`` and samples with ``solver``.

    Parameters
    ----------
    field: a :class:`unified_ode.physics.Field`.
    model: ``nn.Module`` with ``forward(x, t) -> prediction`` in the objective's
        parametrisation (a :class:`~unified_ode.networks.precond.Preconditioned` network or
        the exact posterior).
    objective: a bound :class:`~unified_ode.objectives.Objective` (``objective.bind(field)``
        called): ``(model, field, y) -> scalar loss``; its ``parametrisation`` says what
        ``model`` predicts.
    solver: default :class:`unified_ode.solvers.Solver` for :meth:`sample`.
    data_shape: shape of one sample.
    optimizer: ``params -> torch.optim.Optimizer``, e.g. ``functools.partial(torch.optim.Adam,
        lr=2e-3)`` (what Hydra's ``_partial_: true`` configs of ``conf/optim/`` give). None:
        the module cannot be trained (sampling only).
    lr_warmup_steps: linear learning-rate warm-up over this many optimiser steps (from
        ``lr / lr_warmup_steps`` to ``lr``); 0: none.
    compile: train through ``torch.compile(model)`` (the stored weights and checkpoints are
        those of the uncompiled model, so checkpoints do not depend on this switch).

    ``ema`` is set by the :class:`~unified_ode.lit.ema.EMA` callback; :meth:`sample` and
    :meth:`use_ema` then use the averaged weights. ``evaluation`` is set by the
    :class:`~unified_ode.lit.callbacks.SampleMetrics` callback and provides the validation
    data (prior draws).
    """

    def __init__(self, field, model: torch.nn.Module, objective, solver: Solver,
                 data_shape, optimizer=None, lr_warmup_steps: int = 0, compile: bool = False):
        super().__init__()
        self.field = field
        self.model = model
        self.objective = objective
        self.solver = solver
        self.data_shape = tuple(int(s) for s in data_shape)
        self.optimizer_factory = optimizer
        self.lr_warmup_steps = int(lr_warmup_steps)
        if self.lr_warmup_steps < 0:
            raise ValueError(f"lr_warmup_steps must be >= 0, got {lr_warmup_steps}")
        self.compile = bool(compile)
        self._compiled: dict = {}  # not a submodule: keeps state_dict keys unchanged
        self.ema = None
        self.evaluation = None

    def __setattr__(self, name: str, value) -> None:
        """``nn.Module.__setattr__``, with a fast path for re-assigning an existing plain
        attribute a plain value (str, number, bool, None), which it would store exactly so.
        Lightning's loop does this ~46 times per optimiser step (the name of the hook it is
        in, and back), and nn.Module's type checks made that ~0.2 CPU ms of its fixed cost per
        step (bench/overhead.py, docs/overhead.md). Parameters, buffers, submodules and
        tensors, new names and properties take nn.Module's own path unchanged."""
        if type(value) in _PLAIN_TYPES and name in self.__dict__:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # --- the run's config ----------------------------------------------------------------
    def remember_config(self, config: dict) -> None:
        """Store the composed, resolved config (plain containers) in every checkpoint, so that
        :meth:`load_from_checkpoint` can rebuild this module. Not sent to the loggers here
        (``train.py`` logs the config itself)."""
        self.save_hyperparameters({CONFIG_KEY: config}, logger=False)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, *, ema: bool = True,
                             **_ignored):
        """The module of a checkpoint written by ``train.py``, rebuilt from the config the
        checkpoint stores, with its EMA weights (``ema=True``, when the checkpoint has them)
        or its raw weights; in eval mode, on ``map_location`` (default: CPU). The file is read
        with ``weights_only=True``."""
        from omegaconf import OmegaConf

        from unified_ode.app.build import build_module
        from unified_ode.app.runs import load_weights, read_checkpoint
        from unified_ode.errors import UserError

        path = Path(checkpoint_path)
        config = (read_checkpoint(path).get("hyper_parameters") or {}).get(CONFIG_KEY)
        if config is None:
            raise UserError(f"{str(path)!r} holds no run config (written before configs were "
                            "stored in checkpoints?): load it with sample.py run=<its run dir>.")
        module, _ = build_module(OmegaConf.create(config))
        load_weights(module, path, str(config.get("network", {}).get("_target_")), ema=ema)
        module.remember_config(config)
        return module.to(map_location or "cpu").eval()

    # --- inference -----------------------------------------------------------------------
    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.model(x, t)

    @property
    def parametrisation(self):
        """What ``model`` predicts (:class:`~unified_ode.parametrisation.Parametrisation`)."""
        return self.objective.parametrisation

    def flow(self) -> ProbabilityFlow:
        """The generative ODE of the current weights, as solvers see it."""
        return ProbabilityFlow(self.parametrisation, self.model)

    def as_k_diffusion(self):
        """This model as a k-diffusion denoiser ``denoiser(z, sigma)`` (affine fields:
        ``z = x/a``, ``σ = s/a``; see :mod:`unified_ode.interop`). It uses the current weights:
        wrap calls in ``with module.use_ema():`` for the EMA weights."""
        from unified_ode.interop import KDiffusionDenoiser

        return KDiffusionDenoiser(self.flow(), self.field)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """``dx/dt`` at states ``x`` ``(B, *shape)`` and a scalar (or ``(B,)``) time ``t``."""
        return self.flow().drift(x, t)

    def sample_prior(self, n: int, *, generator=None) -> Tensor:
        return self.field.sample_prior(n, self.data_shape, generator=generator,
                                       device=self.device)

    @contextlib.contextmanager
    def use_ema(self, enabled: bool = True):
        """``with module.use_ema():`` the model holds the EMA weights (if an EMA is attached)."""
        if enabled and self.ema is not None:
            with self.ema.applied(self.model):
                yield self
        else:
            yield self

    @torch.no_grad()
    def sample(self, n: int | None = None, *, x_T: Tensor | None = None,
               solver: Solver | None = None, generator=None, ema: bool = True,
               record_every: int = 0, callback=None, progress: bool = False,
               labels: Tensor | None = None, guidance: float = 0.0,
               guidance_interval=None) -> SolveResult:
        """Integrate the generative ODE from prior states ``x_T`` (or ``n`` fresh ones), with
        the EMA weights when an EMA is attached and ``ema`` is true. ``record_every``,
        ``callback``, ``progress``: see :meth:`unified_ode.solvers.Solver.solve`. ``labels``
        ``(B,)``, ``guidance``, ``guidance_interval``: class-conditional, guided sampling
        (:func:`unified_ode.guidance.guided_flow`; checked before any step)."""
        from unified_ode.guidance import guided_flow

        flow = self.flow() if labels is None and not guidance else guided_flow(
            self.parametrisation, self.model, labels, guidance, guidance_interval)
        if x_T is None:
            if n is None:
                raise ValueError("sample() needs n or x_T")
            x_T = self.sample_prior(n, generator=generator)
        solver = solver or self.solver
        was_training = self.training
        self.eval()
        try:
            with self.use_ema(ema):
                times = solver.time_grid(self.field)
                return solver.solve(flow, x_T.to(self.device), times,
                                    record_every=record_every, callback=callback,
                                    progress=progress)
        finally:
            self.train(was_training)

    # --- validation: sample metrics ------------------------------------------------------
    def val_dataloader(self):
        """Batches of fixed prior draws from the attached
        :class:`~unified_ode.lit.callbacks.SampleMetrics` (none without one). The data modules
        hand this on as their own ``val_dataloader``."""
        return [] if self.evaluation is None else self.evaluation.dataloader(self)

    def validation_step(self, batch, batch_idx: int) -> SolveResult:
        """Integrate one batch of prior states ``(B, *data_shape)`` to samples (EMA weights),
        or a pair ``(states, labels (B,))`` to samples of those classes (class-conditional
        models); the metrics callback collects them in ``on_validation_batch_end``."""
        if isinstance(batch, (list, tuple)):
            x_T, labels = batch
            return self.sample(x_T=x_T, labels=labels)
        return self.sample(x_T=batch)

    # --- training ------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        y = batch[0] if isinstance(batch, (list, tuple)) else batch
        labels = {"labels": batch[1]} if isinstance(batch, (list, tuple)) and len(batch) > 1 \
            else {}  # class-conditional data: (x, label) batches
        loss = self.objective(self._train_model(), self.field, y, **labels)
        if self._logging_step():
            self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True,
                     on_epoch=False)
        return loss

    def _logging_step(self) -> bool:
        """Whether this step's scalars reach the loggers: the steps Lightning writes
        (``trainer.log_every_n_steps``), so that the other steps skip ``self.log``'s
        bookkeeping (measured: ~3 ms a step on CPU, ~10% of the default run's step)."""
        every = int(getattr(self.trainer, "log_every_n_steps", 1) or 1)
        return (self.global_step + 1) % every == 0 or bool(self.trainer.fast_dev_run)

    def _train_model(self) -> torch.nn.Module:
        """The model the loss is computed with: ``torch.compile(model)`` when ``compile``
        (compiled lazily, on the first step, so the module still pickles for ddp_spawn)."""
        if not self.compile:
            return self.model
        if "model" not in self._compiled:
            self._compiled["model"] = torch.compile(self.model)
        return self._compiled["model"]

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_compiled"] = {}  # compiled graphs do not pickle; recompiled after unpickling
        return state

    # --- checkpoints: a distillation method's own state --------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Store a distillation method's training state (the consistency target network)
        under ``checkpoint["distill_state"]``; objectives keep none."""
        save = getattr(self.objective, "checkpoint_state", None)
        state = save() if callable(save) else {}
        if state:
            from unified_ode.distill.base import DISTILL_KEY

            checkpoint[DISTILL_KEY] = state

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore what :meth:`on_save_checkpoint` stored (on ``resume=true`` / ``ckpt_path=``).
        A run without a ``distill=`` method (e.g. an ordinary objective started from a
        student's checkpoint) ignores the distillation state, and says so."""
        from unified_ode.distill.base import DISTILL_KEY

        state = checkpoint.get(DISTILL_KEY)
        if not state:
            return
        restore = getattr(self.objective, "restore_checkpoint_state", None)
        if not callable(restore):
            print(f"note: the checkpoint's {DISTILL_KEY} ({', '.join(sorted(state))}) is not "
                  "used: this run has no distill= method", flush=True)
            return
        restore(state, self.model)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters (network=exact needs no "
                             "training: use sample.py)")
        if self.optimizer_factory is None:
            raise ValueError("GenerativeODE was built without an optimizer; pass "
                             "optimizer=functools.partial(torch.optim.Adam, lr=...) (conf/optim)")
        opt = self.optimizer_factory(params)
        if self.lr_warmup_steps <= 0:
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, functools.partial(_linear_warmup, steps=self.lr_warmup_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def num_parameters(self) -> int:
        return sum(math.prod(p.shape) for p in self.model.parameters() if p.requires_grad)


def _linear_warmup(step: int, steps: int) -> float:
    """Learning-rate factor of step ``step`` (0-based) under a ``steps``-step linear warm-up
    (a module-level function, so the scheduler pickles)."""
    return min(1.0, (step + 1) / steps)
