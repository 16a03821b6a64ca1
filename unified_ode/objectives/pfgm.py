"""PFGM's objective: regress the normalised empirical field of the data (THEORY.md §6).

The target at a perturbed point ``(x, t)`` is the x-part of ``sqrt(d)·E/(||E|| + γ)``, with
``E`` the field of unit charges at a reference batch of clean data
(:func:`empirical_poisson_field`); the prediction is
:class:`~unified_ode.parametrisation.PFGMNormalisedField`. Poisson field only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from unified_ode.errors import UserError
from unified_ode.objectives.base import Objective, per_sample_mse
from unified_ode.parametrisation import PFGMNormalisedField, normalised_poisson_field
from unified_ode.physics.base import sq_dists


def empirical_poisson_field(x: Tensor, t: Tensor, reference: Tensor, *, chunk: int = 1024,
                            dtype: torch.dtype = torch.float64) -> Tensor:
    """PFGM's empirical field at ``(x, t)`` of unit charges at ``(y_i, 0)``, with weights that
    sum to one: ``E = −Σ_i w_i ((x, t) − (y_i, 0))``, ``w_i ∝ ||(x, t) − (y_i, 0)||^(−(d+1))``.

    ``x`` ``(B, *shape)``, ``t`` ``(B,)``, ``reference`` ``(M, *shape)``; returns ``(B, d+1)``
    in ``dtype`` (x-part first, then the t-part, which is ``−t``). The weights are a softmax
    of ``−(d+1)/2 · log(||x − y_i||² + t²)`` streamed over ``chunk`` reference rows at a time
    (online log-sum-exp), so memory is ``B × chunk`` weights plus ``B × d`` sums, never
    ``B × M × d``.
    """
    from unified_ode.physics.posterior import StreamingSoftmax  # the one streaming loop

    b, d = x.shape[0], math.prod(x.shape[1:])
    xf = x.detach().flatten(1).to(dtype)
    ref = reference.detach().flatten(1).to(dtype)
    t2 = torch.as_tensor(t, device=x.device).to(dtype).expand(b).pow(2)
    acc = StreamingSoftmax(b, d, dtype=dtype, device=x.device)
    for j in range(0, ref.shape[0], chunk):
        y = ref[j:j + chunk]
        logits = sq_dists(xf, y).add_(t2[:, None]).log_().mul_(-0.5 * (d + 1))
        acc.update(logits, y)
    mean_y = acc.mean()
    return torch.cat([mean_y - xf, -t2.sqrt()[:, None]], dim=1)


class PFGMNormalisedObjective(Objective):
    """PFGM's normalised empirical field (THEORY.md §6); Poisson field only.

    Each step: the first ``small_batch`` points of the batch are perturbed with the kernel at
    times from the field's training-time law; the empirical field ``E`` at each perturbed
    point is computed against a reference batch of clean data
    (:func:`empirical_poisson_field`, chunked); the model regresses the x-part of
    ``sqrt(d)·E/(||E|| + γ)`` (its t-part is ``−sqrt(d)·t/(||E|| + γ)``, fixed by the x-part
    and ``t``).

    The reference batch is the current training batch plus the most recent earlier ones, up
    to ``reference_size`` points: a first-in-first-out buffer of training data kept by this
    object (not checkpointed; it refills within ``reference_size / batch_size`` steps after a
    restart). PFGM itself uses one large batch (4096) as the reference; the buffer gives the
    same reference size at any data-loader batch size.

    Parameters: ``gamma`` (γ of the normalisation, 5 in PFGM), ``reference_size`` (clean
    reference points per step, 4096), ``small_batch`` (perturbed points per step, 128),
    ``chunk`` (reference rows per chunk of the field computation).
    """

    parametrisation_class = PFGMNormalisedField
    name = PFGMNormalisedField.name

    def __init__(self, gamma: float = 5.0, reference_size: int = 4096, small_batch: int = 128,
                 chunk: int = 1024):
        if int(reference_size) < 1 or int(small_batch) < 1 or int(chunk) < 1:
            raise ValueError("objective.reference_size, small_batch and chunk must be >= 1")
        if not float(gamma) >= 0:
            raise ValueError(f"objective.gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.reference_size = int(reference_size)
        self.small_batch = int(small_batch)
        self.chunk = int(chunk)
        self._buffer: list[Tensor] = []

    def parametrisation_options(self) -> dict:
        return {"gamma": self.gamma}

    def set_coupling(self, coupling) -> None:
        if coupling is not None and coupling.pairs:
            raise UserError(f"coupling={coupling.name} is not available with "
                            "objective=pfgm_normalised (its targets come from a reference batch, "
                            "not from paired noise); use coupling=independent")
        super().set_coupling(coupling)

    def describe(self) -> dict:
        return {**super().describe(), "reference_size": self.reference_size,
                "small_batch": self.small_batch, "chunk": self.chunk}

    def reference(self, y: Tensor) -> Tensor:
        """Push the clean batch ``y`` into the buffer; return the reference batch
        ``(M, *shape)``, newest first, ``M <= reference_size``."""
        y = y.detach()
        kept, total = [y], y.shape[0]
        for old in self._buffer:
            if total >= self.reference_size:
                break
            if old.shape[1:] != y.shape[1:] or old.device != y.device:
                continue
            kept.append(old)
            total += old.shape[0]
        self._buffer = kept
        return torch.cat(kept)[: self.reference_size]

    def targets(self, x: Tensor, t: Tensor, reference: Tensor) -> Tensor:
        """The regression target (x-part of the normalised field) at ``(x, t)``."""
        e = empirical_poisson_field(x, t, reference, chunk=self.chunk)
        mean_y = (x.flatten(1).to(e.dtype) + e[:, :-1]).view(x.shape)
        return normalised_poisson_field(x.to(e.dtype), t.to(e.dtype), mean_y,
                                        self.gamma).to(x.dtype)

    def labels_unsupported(self) -> str:
        """Class-conditional training is refused. The target is the normalised field of a
        reference batch, which for a labelled sample must be that of its class's points and,
        for a dropped label (the null class guidance needs), that of all points; but labels
        are dropped inside the network (``network.p_uncond``, :mod:`unified_ode.networks.labels`),
        where the objective cannot see which target a sample needs. The denoiser objective has
        no such problem (its target, the clean point, is the same for both)."""
        return ("objective=pfgm_normalised does not train class-conditional models: its target "
                "is the normalised field of a reference batch, which must be the class's points "
                "for a labelled sample and all points for a dropped label (the null class that "
                "guidance needs), and the network drops labels internally (network.p_uncond), "
                "unseen by the objective. Train PFGM's field with objective=denoiser (the "
                "default of physics=poisson) or objective=velocity with "
                "dataset.conditional=true; network=exact samples the conditional field with "
                "any objective, pfgm_normalised included.")

    def __call__(self, model, field, y: Tensor, *, labels: Tensor | None = None,
                 generator=None) -> Tensor:
        if labels is not None:
            raise UserError(self.labels_unsupported())
        reference = self.reference(y)
        small = y[: self.small_batch]
        t = self.sample_time(field, small.shape[0], generator=generator, device=y.device)
        t = t.to(y.dtype)
        x = field.sample_kernel(small, t, generator=generator)
        with torch.no_grad():
            target = self.targets(x, t, reference)
        return per_sample_mse(model(x, t), target).mean()
