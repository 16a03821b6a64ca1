"""Regression objectives whose target has a closed form given the clean batch (THEORY.md §6).

* ``denoiser``: ``E λ(t) ||D_θ(x, t) − y||²`` with ``λ = 1/c_out(t)²`` from the field's
  preconditioning (EDM's ``(σ²+σ_d²)/(σ σ_d)²`` for Gaussian noise); fields with a denoiser
  form.
* ``velocity``: flow matching, ``E ||v_θ(x, t) − v(x, t | y)||²``; any field.

Both draw ``t`` from the field's training-time law and ``x`` from its kernel, so the same code
trains every field.
"""

from __future__ import annotations

from torch import Tensor

from unified_ode.objectives.base import Objective, label_kwargs, per_sample_mse
from unified_ode.parametrisation import Denoiser, Velocity


class DenoiserObjective(Objective):
    """EDM's denoising score-matching loss, adapted to any affine field through ``sigma(t)``."""

    parametrisation_class = Denoiser
    name = Denoiser.name
    time_law_hint = "lognormal"

    def __call__(self, model, field, y: Tensor, *, labels: Tensor | None = None,
                 generator=None) -> Tensor:
        x, t = self.noisy_batch(field, y, generator=generator)
        prediction, coefficients = model(x, t, **label_kwargs(labels),
                                         return_coefficients=True)
        weight = self.parametrisation.loss_weight(coefficients)
        return (weight * per_sample_mse(prediction, y)).mean()


class VelocityObjective(Objective):
    """Conditional flow matching: regress the conditional velocity of the field."""

    parametrisation_class = Velocity
    name = Velocity.name
    time_law_hint = "uniform"

    def __call__(self, model, field, y: Tensor, *, labels: Tensor | None = None,
                 generator=None) -> Tensor:
        x, t = self.noisy_batch(field, y, generator=generator)
        target = field.conditional_velocity(x, y, t)
        return per_sample_mse(model(x, t, **label_kwargs(labels)), target).mean()
