"""Training objectives (THEORY.md §6). Each maps a clean batch ``y`` ``(B, *shape)`` to a scalar
loss for a model ``model(x, t)`` that returns the field's prediction.

* ``denoiser``: ``E λ(t) ||D_θ(x, t) − y||²`` with ``λ = 1/c_out(t)²`` from the field's
  preconditioning (EDM's ``(σ²+σ_d²)/(σ σ_d)²`` for Gaussian noise); for affine fields.
* ``velocity``: flow matching, ``E ||v_θ(x, t) − v(x, t | y)||²``; for any field.

Both draw ``t`` from the field's training-time law and ``x`` from its kernel, so the same code
trains every field.
"""

from __future__ import annotations

from torch import Tensor


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


def build_objective(field, sigma_data: float = 0.5):
    """The objective object named by ``field.objective``."""
    if field.objective == "denoiser":
        return DenoiserObjective(sigma_data)
    if field.objective == "velocity":
        return VelocityObjective()
    raise ValueError(f"no objective named {field.objective!r}")


__all__ = ["DenoiserObjective", "VelocityObjective", "build_objective"]
