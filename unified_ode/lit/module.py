"""The LightningModule: one field, one model, one objective, one solver.

The module knows about training loops, devices and loggers; the physics it delegates to the
field (kernel, prior, drift), the network to the model (a preconditioned network or the exact
posterior) and integration to the solver.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import Tensor

from unified_ode.solvers.affine import model_denoiser
from unified_ode.solvers.base import Solver, SolveResult


class GenerativeODE(L.LightningModule):
    """Trains ``model`` on ``field`` with ``objective`` and samples with ``solver``.

    Parameters
    ----------
    field: a :class:`unified_ode.physics.Field`.
    model: ``nn.Module`` with ``forward(x, t) -> prediction`` of kind ``field.prediction``.
    objective: callable ``(model, field, y) -> scalar loss``.
    solver: default :class:`unified_ode.solvers.Solver` for :meth:`sample`.
    data_shape: shape of one sample.
    optim: ``lr``, ``betas``, ``weight_decay``, ``warmup_steps``.
    """

    def __init__(self, field, model: torch.nn.Module, objective, solver: Solver,
                 data_shape, optim: dict | None = None):
        super().__init__()
        self.field = field
        self.model = model
        self.objective = objective
        self.solver = solver
        self.data_shape = tuple(int(s) for s in data_shape)
        self.optim = {"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 0.0,
                      "warmup_steps": 0, **(optim or {})}

    # --- inference -----------------------------------------------------------------------
    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.model(x, t)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """``dx/dt`` at states ``x`` ``(B, *shape)`` and a scalar (or ``(B,)``) time ``t``."""
        tb = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return self.field.drift(x, tb, self.model(x, tb))

    def sample_prior(self, n: int, *, generator=None) -> Tensor:
        return self.field.sample_prior(n, self.data_shape, generator=generator,
                                       device=self.device)

    @torch.no_grad()
    def sample(self, n: int | None = None, *, x_T: Tensor | None = None,
               solver: Solver | None = None, generator=None) -> SolveResult:
        """Integrate the generative ODE from prior states ``x_T`` (or ``n`` fresh ones)."""
        if x_T is None:
            if n is None:
                raise ValueError("sample() needs n or x_T")
            x_T = self.sample_prior(n, generator=generator)
        solver = solver or self.solver
        was_training = self.training
        self.eval()
        try:
            times = solver.time_grid(self.field)
            return solver.solve(self.drift, x_T.to(self.device), times, field=self.field,
                                denoiser=model_denoiser(self.field, self.model))
        finally:
            self.train(was_training)

    # --- training ------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        y = batch[0] if isinstance(batch, (list, tuple)) else batch
        loss = self.objective(self.model, self.field, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step "
                                     f"{self.global_step}; lower optim.lr or check the data")
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters (network=exact needs no "
                             "training: use sample.py)")
        opt = torch.optim.Adam(params, lr=self.optim["lr"], betas=tuple(self.optim["betas"]),
                               weight_decay=self.optim["weight_decay"])
        warmup = int(self.optim["warmup_steps"])
        if warmup <= 0:
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def num_parameters(self) -> int:
        return sum(math.prod(p.shape) for p in self.model.parameters() if p.requires_grad)
