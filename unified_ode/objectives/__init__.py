"""Training objectives (THEORY.md §6). Each maps a clean batch ``y`` ``(B, *shape)`` to a scalar
loss for a model ``model(x, t)`` that returns the field's prediction.

* ``denoiser``: ``E λ(t) ||D_θ(x, t) − y||²`` with ``λ = 1/c_out(t)²`` from the field's
  preconditioning (EDM's ``(σ²+σ_d²)/(σ σ_d)²`` for Gaussian noise); for affine fields.
* ``velocity``: flow matching, ``E ||v_θ(x, t) − v(x, t | y)||²``; for any field.

Both draw ``t`` from the field's training-time law and ``x`` from its kernel, so the same code
trains every field.

* ``pfgm`` (Poisson field only): PFGM's normalised empirical field, :class:`PFGMObjective`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from unified_ode.physics.base import sq_dists


def _per_sample_mse(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).flatten(1).pow(2).mean(1)


class DenoiserObjective:
    """EDM's denoising score-matching loss, adapted to any affine field through ``sigma(t)``."""

    name = "denoiser"

    def __init__(self, sigma_data: float = 0.5):
        self.sigma_data = float(sigma_data)

    def __call__(self, model, field, y: Tensor, *, generator=None) -> Tensor:
        t = field.sample_training_time(y.shape[0], generator=generator, device=y.device)
        t = t.to(y.dtype)
        x = field.sample_kernel(y, t, generator=generator)
        _, c_out, _, _ = field.denoiser_coefficients(x, t, self.sigma_data)
        weight = 1.0 / c_out**2
        return (weight * _per_sample_mse(model(x, t), y)).mean()


class VelocityObjective:
    """Conditional flow matching: regress the conditional velocity of the field."""

    name = "velocity"

    def __call__(self, model, field, y: Tensor, *, generator=None) -> Tensor:
        t = field.sample_training_time(y.shape[0], generator=generator, device=y.device)
        t = t.to(y.dtype)
        x = field.sample_kernel(y, t, generator=generator)
        target = field.conditional_velocity(x, y, t)
        return _per_sample_mse(model(x, t), target).mean()


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


class PFGMObjective:
    """PFGM's normalised empirical field (THEORY.md §6); Poisson field only.

    Each step: the first ``small_batch`` points of the batch are perturbed with the kernel at
    times from the field's training-time law; the empirical field ``E`` at each perturbed
    point is computed against a reference batch of clean data
    (:func:`empirical_poisson_field`, chunked); the model regresses the x-part of
    ``sqrt(d)·E/(||E|| + γ)`` (:meth:`PoissonField.normalized_field
    <unified_ode.physics.poisson.PoissonField.normalized_field>`; its t-part is
    ``−sqrt(d)·t/(||E|| + γ)``, fixed by the x-part and ``t``).

    The reference batch is the current training batch plus the most recent earlier ones, up
    to ``reference_size`` points: a first-in-first-out buffer of training data kept by this
    object (not checkpointed; it refills within ``reference_size / batch_size`` steps after a
    restart). PFGM itself uses one large batch (4096) as the reference; the buffer gives the
    same reference size at any data-loader batch size.
    """

    name = "pfgm"

    def __init__(self, reference_size: int = 4096, small_batch: int = 128, chunk: int = 1024):
        if int(reference_size) < 1 or int(small_batch) < 1 or int(chunk) < 1:
            raise ValueError("physics.pfgm.reference_size, small_batch and chunk must be >= 1")
        self.reference_size = int(reference_size)
        self.small_batch = int(small_batch)
        self.chunk = int(chunk)
        self._buffer: list[Tensor] = []

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

    def targets(self, field, x: Tensor, t: Tensor, reference: Tensor) -> Tensor:
        """The regression target (x-part of the normalised field) at ``(x, t)``."""
        e = empirical_poisson_field(x, t, reference, chunk=self.chunk)
        mean_y = (x.flatten(1).to(e.dtype) + e[:, :-1]).view(x.shape)
        return field.normalized_field(x.to(e.dtype), t.to(e.dtype), mean_y).to(x.dtype)

    def __call__(self, model, field, y: Tensor, *, generator=None) -> Tensor:
        if not hasattr(field, "normalized_field"):
            raise ValueError(f"objective=pfgm needs the Poisson field, not {field.name}")
        reference = self.reference(y)
        small = y[: self.small_batch]
        t = field.sample_training_time(small.shape[0], generator=generator, device=y.device)
        t = t.to(y.dtype)
        x = field.sample_kernel(small, t, generator=generator)
        with torch.no_grad():
            target = self.targets(field, x, t, reference)
        return _per_sample_mse(model(x, t), target).mean()


def build_objective(field, sigma_data: float = 0.5):
    """The objective object named by ``field.objective``."""
    if field.objective == "denoiser":
        return DenoiserObjective(sigma_data)
    if field.objective == "velocity":
        return VelocityObjective()
    if field.objective == "pfgm":
        opts = getattr(field, "pfgm", {})
        return PFGMObjective(**{k: opts[k] for k in ("reference_size", "small_batch", "chunk")
                                if k in opts})
    raise ValueError(f"no objective named {field.objective!r}")


__all__ = ["DenoiserObjective", "PFGMObjective", "VelocityObjective", "build_objective",
           "empirical_poisson_field"]
