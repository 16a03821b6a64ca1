"""Exponential moving average (EMA) of the network weights, as a Lightning callback.

After every optimiser step the shadow weights move towards the trained ones::

    shadow <- beta * shadow + (1 - beta) * param

with ``beta`` from one of two rules:

* **half-life in images** (EDM): ``beta = 0.5 ** (images_in_step / half_life)``, so the weight of
  an update halves every ``half_life_images`` training images whatever the batch size. Warm-up
  ``"edm"`` shortens the half-life early in training to ``min(half_life, seen * rampup_ratio)``
  (``seen``: images before this step), so the average never remembers the random start.
* **fixed decay**: ``beta = decay``; warm-up ``"tf"`` uses ``min(decay, (1 + n) / (10 + n))``
  (``n``: updates before this one), as in TensorFlow's ``ExponentialMovingAverage``.

The EMA weights are what sampling and evaluation use: the callback attaches itself to the
module (``GenerativeODE.ema``) and :meth:`EMA.applied` swaps the shadow weights into the model
for the duration of a ``with`` block. Checkpoints carry them twice over: the callback state
(counters) plus ``checkpoint["ema_state_dict"]``, a full ``state_dict`` of the module with the
averaged parameters, which :func:`unified_ode.app.runs.load_weights` reads for sampling.
Buffers are not averaged (they are copied from the model when swapped in). Updates and swaps
are single ``torch._foreach_*`` calls over all parameters (no Python loop, no host sync).

The callback holds only tensors and numbers, so it pickles (``ddp_spawn``); under DDP every rank
keeps the same average, since every rank sees the same parameters after each step.

Why not Lightning's ``WeightAveraging``/``EMAWeightAveraging`` or ``torch.optim.swa_utils``
(checked against Lightning 2.6 / torch 2.x): ``WeightAveraging`` copies the average into the
trained model when fitting ends (a ``last.ckpt`` written afterwards loses the raw weights, so a
resume is no longer exact, and ``sample(ema=False)`` gets the average), stores the average as
the checkpoint's ``state_dict`` (a different file format from every run written so far) and
exposes the averaged model only through a private attribute; ``AveragedModel.update_parameters``
reads its ``n_averaged`` counter back to the host twice per update (a GPU sync every step) and
walks the parameters in Python. The half-life-in-images rule also needs the image count, which
neither keeps. Hence this one small class.
"""

from __future__ import annotations

import contextlib

import lightning as L
import torch

EMA_KEY = "ema_state_dict"


class EMA(L.Callback):
    """EMA of ``pl_module.model``'s floating-point parameters.

    Parameters
    ----------
    half_life_images: half-life of the average in training images (all ranks and accumulated
        micro-batches together). Used when ``decay`` is null.
    decay: a fixed per-step decay ``beta`` instead of a half-life.
    warmup: ``"edm"`` (half-life ramp, with ``rampup_ratio``), ``"tf"`` (``(1+n)/(10+n)``) or
        ``"none"``.
    rampup_ratio: EDM's ramp: half-life at most ``rampup_ratio × images seen``.
    """

    def __init__(self, half_life_images: float | None = 500_000, decay: float | None = None,
                 warmup: str = "edm", rampup_ratio: float = 0.05):
        super().__init__()
        if decay is None and half_life_images is None:
            raise ValueError("EMA needs decay or half_life_images")
        if decay is not None and not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if warmup not in ("edm", "tf", "none"):
            raise ValueError(f"EMA warmup must be 'edm', 'tf' or 'none', got {warmup!r}")
        self.half_life_images = None if half_life_images is None else float(half_life_images)
        self.decay = None if decay is None else float(decay)
        self.warmup = warmup
        self.rampup_ratio = float(rampup_ratio)
        self.num_updates = 0
        self.num_images = 0        # images seen at the last update (all ranks)
        self.shadow: dict[str, torch.Tensor] = {}
        self._pending: dict[str, torch.Tensor] | None = None  # restored, not yet on device
        self._images_since_update = 0
        self._last_step = None
        self._cached = None        # (key, parameters, shadows, same dtypes): see _lists

    # --- the rule ------------------------------------------------------------------------
    def beta(self, images_in_step: int) -> float:
        """The decay of the next update, which covers ``images_in_step`` new images."""
        if self.decay is not None:
            if self.warmup == "tf":
                return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
            return self.decay
        half_life = self.half_life_images
        if self.warmup == "edm":
            half_life = min(half_life, self.num_images * self.rampup_ratio)
        return 0.5 ** (images_in_step / max(half_life, 1e-8))

    @torch.no_grad()
    def update(self, model: torch.nn.Module, images_in_step: int) -> float:
        """One EMA update from ``model``'s current parameters; returns the ``beta`` used."""
        if not self.shadow:
            self.reset_to(model)
        beta = self.beta(images_in_step)
        params, shadow, same_dtype = self._lists(model)
        if not same_dtype:  # e.g. bf16 parameters, float32 average
            params = [p.to(s.dtype) for p, s in zip(params, shadow)]
        torch._foreach_lerp_(shadow, params, 1.0 - beta)
        self.num_updates += 1
        self.num_images += int(images_in_step)
        return beta

    @staticmethod
    def _parameters(model) -> tuple[list[str], list[torch.Tensor]]:
        """Names and (detached) tensors of ``model``'s floating-point parameters."""
        pairs = [(n, p.detach()) for n, p in model.named_parameters() if p.is_floating_point()]
        return [n for n, _ in pairs], [p for _, p in pairs]

    def _lists(self, model) -> tuple[list[torch.Tensor], list[torch.Tensor], bool]:
        """``(parameters, shadows, same dtypes)`` in matching order, built once per model and
        shadow dict (so an update is one fused call, not a walk over the parameters)."""
        key = (model, self.shadow)
        if (self._cached is None or self._cached[0][0] is not model
                or self._cached[0][1] is not self.shadow):
            names, params = self._parameters(model)
            shadow = [self.shadow[n] for n in names]
            same = all(p.dtype == t.dtype for p, t in zip(params, shadow))
            self._cached = (key, params, shadow, same)
        return self._cached[1:]

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cached"] = None  # references the model's parameters; rebuilt on demand
        return state

    @torch.no_grad()
    def reset_to(self, model: torch.nn.Module) -> None:
        names, params = self._parameters(model)
        self.shadow = {n: p.clone().float() for n, p in zip(names, params)}

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module):
        """``with ema.applied(model):`` the model holds the EMA weights; restored on exit."""
        if not self.shadow:
            yield model
            return
        names, params = self._parameters(model)
        with torch.no_grad():
            backup = torch._foreach_mul(params, 1.0)  # copies
            torch._foreach_copy_(params, [self.shadow[n] for n in names])
        try:
            yield model
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, backup)

    # --- Lightning hooks -----------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module):
        model = pl_module.model
        if self._pending is not None:
            own = dict(zip(*self._parameters(model)))
            self.shadow = {n: t.to(own[n].device).float() for n, t in self._pending.items()}
            self._pending = None
        elif not self.shadow:
            self.reset_to(model)
        else:
            self.shadow = {n: t.to(pl_module.device) for n, t in self.shadow.items()}
        pl_module.ema = self

    def on_train_start(self, trainer, pl_module):
        self._last_step = trainer.global_step  # after a resume, the restored step
        self._images_since_update = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        y = batch[0] if isinstance(batch, (list, tuple)) else batch
        self._images_since_update += int(y.shape[0]) * trainer.world_size
        if trainer.global_step != self._last_step:  # an optimiser step happened
            self._last_step = trainer.global_step
            self.update(pl_module.model, self._images_since_update)
            self._images_since_update = 0

    def state_dict(self) -> dict:
        return {"num_updates": self.num_updates, "num_images": self.num_images,
                "half_life_images": self.half_life_images, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.num_updates = int(state["num_updates"])
        self.num_images = int(state["num_images"])

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        for name, t in self.shadow.items():
            state[f"model.{name}"] = t.detach().cpu().to(state[f"model.{name}"].dtype)
        checkpoint[EMA_KEY] = state

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        saved = checkpoint.get(EMA_KEY)
        if saved is None:
            return
        self._pending = {n: saved[f"model.{n}"].clone()
                         for n in self._parameters(pl_module.model)[0]}

