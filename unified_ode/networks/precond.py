"""Preconditioning: the wrapper that ties a raw network ``F`` to a field (EDM, THEORY.md §6).

Given a state ``x`` at time ``t``, the field supplies ``a(t)`` (through ``input_scale = 1/a``)
and its noise level ``sigma(t)`` in data units. With ``x~ = x / a``:

* denoiser form: ``D = c_skip x~ + c_out F(c_in x~, c_noise)`` with the field's
  :meth:`~unified_ode.physics.Field.denoiser_coefficients` (EDM's for Gaussian noise:
  ``c_skip = sd²/(σ²+sd²)``, ``c_out = σ sd/sqrt(σ²+sd²)``, ``c_in = 1/sqrt(σ²+sd²)``,
  ``c_noise = ln(σ)/4``);
* velocity form: ``v = v_skip x + v_out F(c_in x~, c_noise)`` with the field's
  :meth:`~unified_ode.physics.Field.velocity_coefficients` (for affine fields: the denoiser
  form carried through the drift; the default ``(0, 1)`` makes ``F`` the velocity).

so the network always sees unit-scale inputs and produces unit-scale outputs, whatever the
field.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Preconditioned(nn.Module):
    """``forward(x, t)`` ``(B, *shape), (B,) -> (B, *shape)``: the field's prediction."""

    def __init__(self, net: nn.Module, field, sigma_data: float = 0.5):
        super().__init__()
        self.net = net
        self.field = field
        self.sigma_data = float(sigma_data)

    @property
    def prediction(self) -> str:
        return self.field.prediction

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        shape = (x.shape[0], *([1] * (x.ndim - 1)))
        x_scaled = x * self.field.input_scale(t).view(shape)
        c_skip, c_out, c_in, c_noise = self.field.denoiser_coefficients(x, t, self.sigma_data)
        f = self.net(x_scaled * c_in.view(shape), c_noise)
        if self.prediction == "velocity":
            v_skip, v_out = self.field.velocity_coefficients(x, t, self.sigma_data)
            return v_skip.view(shape) * x + v_out.view(shape) * f
        denoised = c_skip.view(shape) * x_scaled + c_out.view(shape) * f
        if self.prediction != "denoiser":
            # a field-specific kind that is a function of the denoiser (PFGM's normalised
            # field): the skip connection keeps it exact as t -> 0, where an error in a raw
            # output would be amplified by 1/t in the drift
            return self.field.prediction_from_denoiser(x, t, denoised)
        return denoised
