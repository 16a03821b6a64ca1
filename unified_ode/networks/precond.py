"""Preconditioning: the wrapper that ties a raw network ``F`` to a field (EDM, THEORY.md §6).

Given a state ``x`` at time ``t``, the field supplies ``a(t)`` (through ``input_scale = 1/a``)
and its EDM-style coefficients ``(c_skip, c_out, c_in, c_noise)``
(:meth:`~unified_ode.physics.Field.denoiser_coefficients`; EDM's for Gaussian noise). With
``x~ = x / a`` the network is called as ``F(c_in x~, c_noise)``, so it always sees unit-scale
inputs, and the parametrisation (:mod:`unified_ode.parametrisation`) turns ``F`` into its
prediction: ``D = c_skip x~ + c_out F`` for the denoiser, ``v = v_skip x + v_out F`` for the
velocity, PFGM's normalised field of that ``D``, ...
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Preconditioned(nn.Module):
    """``forward(x, t)`` ``(B, *shape), (B,) -> (B, *shape)``: the parametrisation's
    prediction for the raw network ``net``.

    ``forward(x, t, labels)`` conditions a class-conditional ``net`` on ``labels`` ``(B,)``
    long (``-1``: the null class; ``None``: no labels are passed to ``net``, so an
    unconditional ``net`` is called exactly as before).

    ``forward(x, t, return_coefficients=True)`` also returns the field's coefficients at
    ``(x, t)`` (a tuple of four ``(B,)`` tensors), so that a loss weight needs no second
    computation of them.
    """

    def __init__(self, net: nn.Module, parametrisation, sigma_data: float = 0.5):
        super().__init__()
        self.net = net
        self.parametrisation = parametrisation
        self.field = parametrisation.field
        self.sigma_data = float(sigma_data)

    @property
    def num_classes(self) -> int:
        """Classes of a conditional ``net`` (0: unconditional)."""
        return int(getattr(self.net, "num_classes", 0) or 0)

    @property
    def p_uncond(self) -> float:
        """Label-dropout probability ``net`` was built with (0 for an unconditional net)."""
        return float(getattr(self.net, "p_uncond", 0.0)) if self.num_classes else 0.0

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None,
                return_coefficients: bool = False):
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        shape = (x.shape[0], *([1] * (x.ndim - 1)))
        coefficients = self.field.denoiser_coefficients(x, t, self.sigma_data)
        c_in, c_noise = coefficients[2], coefficients[3]
        x_in = x * self.field.input_scale(t).view(shape) * c_in.view(shape)
        raw = self.net(x_in, c_noise) if labels is None else self.net(x_in, c_noise, labels)
        out = self.parametrisation.from_network(x, t, raw, coefficients, self.sigma_data)
        return (out, coefficients) if return_coefficients else out
