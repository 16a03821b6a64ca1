"""What denoiser-form solvers need of an affine field ``x = a(t) y + s(t) eps``.

For an affine field the generative ODE, written in ``z = x / a`` and ``sigma = s / a``, is
``dz/dsigma = (z − D) / sigma`` whatever the noise law (THEORY.md §3). Its exact solution over
a step from ``t`` to ``t'`` with ``lambda = log(a/s) = −log sigma`` and ``h = lambda(t') −
lambda(t)`` is

    x(t') = (s(t')/s(t)) x(t) + a(t') ∫_0^h e^{−(h−u)} D(lambda(t) + u) du,

which the multistep exponential integrators (:mod:`unified_ode.solvers.multistep`) evaluate
with a polynomial in ``lambda`` through past denoiser outputs. Only ``a`` and ``s`` of the field
are used (float64), so a new affine field needs nothing here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from unified_ode.physics.base import AffineField, Field, bcast


def is_affine(field) -> bool:
    """True when ``field`` has the affine form ``x = a(t) y + s(t) eps`` (a denoiser form)."""
    return isinstance(field, AffineField)


@dataclass
class AffineSchedule:
    """``a(t)`` and ``s(t)`` of an affine field, evaluated in float64 at scalar times."""

    field: AffineField

    @classmethod
    def of(cls, field, solver_name: str) -> AffineSchedule:
        """The schedule of ``field``, or a clear error when it has none."""
        if field is None:
            raise ValueError(f"solver={solver_name} works in denoiser form and needs the field: "
                             "call solve(..., denoiser=D, field=field).")
        if not is_affine(field):
            name = getattr(field, "name", type(field).__name__)
            raise ValueError(
                f"solver={solver_name} needs an affine field (x = a(t) y + s(t) eps, a denoiser "
                f"form); physics={name} is not one. Use solver=heun, rk4 or dopri5.")
        return cls(field)

    def a(self, t: Tensor | float) -> float:
        return float(self.field.a(torch.as_tensor(t, dtype=torch.float64)))

    def s(self, t: Tensor | float) -> float:
        return float(self.field.s(torch.as_tensor(t, dtype=torch.float64)))


def denoiser_from_velocity(field: AffineField, x: Tensor, t: Tensor, velocity: Tensor) -> Tensor:
    """Invert ``f = a' D + (s'/s)(x − a D)`` for ``D``: ``D = (s f − s' x) / (s a' − s' a)``.

    ``x``, ``velocity`` ``(B, *shape)``, ``t`` ``(B,)``; the denominator is ``−a² dsigma/dt``
    (``sigma = s/a``), nonzero wherever the noise level moves.
    """
    tb = bcast(t, x)
    a, s, da, ds = field.a(tb), field.s(tb), field.da(tb), field.ds(tb)
    return (s * velocity - ds * x) / (s * da - ds * a)


def model_denoiser(field: Field, model):
    """``D(x, t)`` of a model on an affine field (``None`` for other fields), for
    ``Solver.solve(..., denoiser=...)``. A velocity-predicting model is converted with
    :func:`denoiser_from_velocity`; ``t`` may be a scalar tensor or ``(B,)``."""
    if not is_affine(field):
        return None

    def denoiser(x: Tensor, t: Tensor) -> Tensor:
        tb = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        pred = model(x, tb)
        if field.prediction == "denoiser":
            return pred
        return denoiser_from_velocity(field, x, tb, pred)

    return denoiser
