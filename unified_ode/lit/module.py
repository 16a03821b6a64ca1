"""The LightningModule: one field, one model, one objective, one solver.

The module knows about training loops, devices and loggers; the physics it delegates to the
field (kernel, prior, drift), the network to the model (a preconditioned network or the exact
posterior) and integration to the solver.
"""

from __future__ import annotations

import contextlib
import math

import lightning as L
import torch
from torch import Tensor

from unified_ode.parametrisation import ProbabilityFlow
from unified_ode.solvers.base import Solver, SolveResult


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
    optim: ``name`` (``adam`` or ``adamw``), ``lr``, ``betas``, ``eps``, ``weight_decay``,
        ``warmup_steps`` (linear learning-rate warm-up from ``lr/warmup_steps`` to ``lr``).
    compile: train through ``torch.compile(model)`` (the stored weights and checkpoints are
        those of the uncompiled model, so checkpoints do not depend on this switch).

    ``ema`` is set by the :class:`~unified_ode.lit.ema.EMA` callback; :meth:`sample` and
    :meth:`use_ema` then use the averaged weights.
    """

    OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}

    def __init__(self, field, model: torch.nn.Module, objective, solver: Solver,
                 data_shape, optim: dict | None = None, compile: bool = False):
        super().__init__()
        self.field = field
        self.model = model
        self.objective = objective
        self.solver = solver
        self.data_shape = tuple(int(s) for s in data_shape)
        self.optim = {"name": "adam", "lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8,
                      "weight_decay": 0.0, "warmup_steps": 0, **(optim or {})}
        if str(self.optim["name"]).lower() not in self.OPTIMIZERS:
            raise ValueError(f"unknown optim.name={self.optim['name']!r}; choose one of "
                             f"{', '.join(self.OPTIMIZERS)}")
        self.compile = bool(compile)
        self._compiled: dict = {}  # not a submodule: keeps state_dict keys unchanged
        self.ema = None

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
               record_every: int = 0, callback=None, progress: bool = False) -> SolveResult:
        """Integrate the generative ODE from prior states ``x_T`` (or ``n`` fresh ones), with
        the EMA weights when an EMA is attached and ``ema`` is true. ``record_every``,
        ``callback``, ``progress``: see :meth:`unified_ode.solvers.Solver.solve`."""
        if x_T is None:
            if n is None:
                raise ValueError("sample() needs n or x_T")
            x_T = self.sample_prior(n, generator=generator)
        solver = solver or self.solver
        was_training = self.training
        self.eval()
        weights = contextlib.ExitStack()
        weights.enter_context(self.use_ema(ema))
        try:
            times = solver.time_grid(self.field)
            return solver.solve(self.flow(), x_T.to(self.device), times,
                                record_every=record_every, callback=callback,
                                progress=progress)
        finally:
            weights.close()
            self.train(was_training)

    # --- training ------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        y = batch[0] if isinstance(batch, (list, tuple)) else batch
        loss = self.objective(self._train_model(), self.field, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step "
                                     f"{self.global_step}; lower optim.lr or check the data")
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

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters (network=exact needs no "
                             "training: use sample.py)")
        opt_class = self.OPTIMIZERS[str(self.optim["name"]).lower()]
        opt = opt_class(params, lr=float(self.optim["lr"]), betas=tuple(self.optim["betas"]),
                        eps=float(self.optim["eps"]),
                        weight_decay=float(self.optim["weight_decay"]))
        warmup = int(self.optim["warmup_steps"])
        if warmup <= 0:
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def num_parameters(self) -> int:
        return sum(math.prod(p.shape) for p in self.model.parameters() if p.requires_grad)
