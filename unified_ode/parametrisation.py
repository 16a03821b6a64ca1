"""What the network predicts, as an object (THEORY.md §6).

A trained model outputs one quantity at a state ``x`` ``(B, *shape)`` and time ``t`` ``(B,)``:
the denoiser ``D ≈ E[y | x, t]``, the velocity ``f ≈ E[v(x, t | y) | x, t]`` (the drift
itself), PFGM's normalised field, ... A :class:`Parametrisation`, bound to one field, owns
every conversion between that output and the rest of the method:

* **network → prediction**: the preconditioning of a raw network output ``F``
  (:meth:`~Parametrisation.from_network`, with the field's EDM-style coefficients);
* **prediction ↔ denoiser ↔ drift**: :meth:`~Parametrisation.drift`,
  :meth:`~Parametrisation.to_denoiser`, :meth:`~Parametrisation.from_denoiser`;
* **the exact prediction** of a finite data set, from its posterior
  (:meth:`~Parametrisation.exact`);
* **the training weight** of a squared error on the prediction
  (:meth:`~Parametrisation.loss_weight`).

:class:`ProbabilityFlow` wraps a model and its parametrisation into what solvers integrate
(the :class:`unified_ode.solvers.base.Flow` protocol): the drift, the denoiser, the exact last
step to ``t = 0`` and, for affine fields, the schedule ``a(t)``, ``s(t)``.

Objectives (:mod:`unified_ode.objectives`) name the parametrisation they train; nothing else
in the package dispatches on what the network predicts.
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar

import torch
from torch import Tensor

from unified_ode.physics.base import Field, bcast
from unified_ode.physics.pfgmpp import PFGMPPField


class Parametrisation(abc.ABC):
    """What a model predicts for ``field``; see the module docstring.

    Subclasses set :attr:`name` and implement the conversions; :meth:`unsupported` says why a
    field cannot be used with them (``None`` when it can).
    """

    #: Name in configs and logs (the ``objective=`` option that trains it).
    name: ClassVar[str]

    def __init__(self, field: Field):
        reason = self.unsupported(field)
        if reason is not None:
            raise ValueError(reason)
        self.field = field

    @classmethod
    def unsupported(cls, field: Field) -> str | None:
        """Why ``field`` cannot be predicted in this form (``None``: it can)."""
        return None

    # --- network -> prediction -----------------------------------------------------------
    @abc.abstractmethod
    def from_network(self, x: Tensor, t: Tensor, f: Tensor, coefficients, sigma_data: float
                     ) -> Tensor:
        """The prediction for raw network output ``f`` at ``(x, t)`` (``t`` ``(B,)``), given the
        field's ``(c_skip, c_out, c_in, c_noise)`` at that state (each ``(B,)``)."""

    def loss_weight(self, coefficients) -> Tensor | float:
        """Weight ``(B,)`` of the per-sample squared error of the prediction (EDM's
        ``1/c_out²`` for the denoiser; 1 otherwise)."""
        return 1.0

    # --- prediction <-> denoiser <-> drift -----------------------------------------------
    @abc.abstractmethod
    def from_denoiser(self, x: Tensor, t: Tensor, denoised: Tensor) -> Tensor:
        """The prediction that corresponds to the denoiser output ``denoised``."""

    @abc.abstractmethod
    def to_denoiser(self, x: Tensor, t: Tensor, prediction: Tensor) -> Tensor:
        """The denoiser ``E[y | x, t]`` that corresponds to ``prediction`` (for a field without
        a denoiser form: the small-``t`` limit of :meth:`Field.denoiser_from_drift`)."""

    def drift(self, x: Tensor, t: Tensor, prediction: Tensor) -> Tensor:
        """``dx/dt`` of the generative ODE for ``prediction`` at ``(x, t)``."""
        return self.field.drift_from_denoiser(x, t, self.to_denoiser(x, t, prediction))

    def exact(self, posterior, x: Tensor, t: Tensor) -> Tensor:
        """The exact prediction of a finite data set: ``posterior`` has
        ``posterior_mean(x, t)`` (``E[y | x, t]``) and ``posterior_velocity(x, t)``
        (``E[v(x, t | y) | x, t]``), both ``(B, *shape)``."""
        return self.from_denoiser(x, t, posterior.posterior_mean(x, t))

    def describe(self) -> dict:
        return {"prediction": self.name}


def denoiser_output(field: Field, x: Tensor, t: Tensor, f: Tensor, coefficients) -> Tensor:
    """EDM's denoiser ``D = c_skip x~ + c_out F`` with ``x~ = x · input_scale(t)``."""
    c_skip, c_out = coefficients[0], coefficients[1]
    x_scaled = x * bcast(field.input_scale(t), x)
    return bcast(c_skip, x) * x_scaled + bcast(c_out, x) * f


class Denoiser(Parametrisation):
    """The network predicts ``D(x, t) ≈ E[y | x, t]`` (EDM): ``D = c_skip x~ + c_out F``."""

    name = "denoiser"

    @classmethod
    def unsupported(cls, field):
        if not field.has_denoiser_form:
            return (f"physics={field.name} has no denoiser form (its drift is not a function "
                    "of E[y | x, t])")
        return None

    def from_network(self, x, t, f, coefficients, sigma_data):
        return denoiser_output(self.field, x, t, f, coefficients)

    def loss_weight(self, coefficients):
        return 1.0 / coefficients[1] ** 2

    def from_denoiser(self, x, t, denoised):
        return denoised

    def to_denoiser(self, x, t, prediction):
        return prediction


class Velocity(Parametrisation):
    """The network predicts the drift ``f ≈ E[v(x, t | y) | x, t]`` (flow matching):
    ``f = v_skip x + v_out F`` with the field's velocity coefficients. Any field."""

    name = "velocity"

    def from_network(self, x, t, f, coefficients, sigma_data):
        v_skip, v_out = self.field.velocity_coefficients(x, t, sigma_data, coefficients)
        return bcast(v_skip, x) * x + bcast(v_out, x) * f

    def from_denoiser(self, x, t, denoised):
        return self.field.drift_from_denoiser(x, t, denoised)

    def to_denoiser(self, x, t, prediction):
        return self.field.denoiser_from_drift(x, t, prediction)

    def drift(self, x, t, prediction):
        return prediction

    def exact(self, posterior, x, t):
        if self.field.has_denoiser_form:  # the drift is linear in y: average y, not v
            return self.from_denoiser(x, t, posterior.posterior_mean(x, t))
        return posterior.posterior_velocity(x, t)


def normalised_poisson_field(x: Tensor, t: Tensor, denoised: Tensor, gamma: float) -> Tensor:
    """x-part ``v = −sqrt(d)(x − D)/(sqrt(||x − D||² + t²) + γ)`` of PFGM's normalised field
    for the denoiser ``D``; ``x``, ``denoised`` ``(B, *shape)``, ``t`` ``(B,)``."""
    d = math.prod(x.shape[1:])
    diff = x - denoised
    norm_e = (diff.flatten(1).pow(2).sum(1) + torch.as_tensor(t).pow(2)).sqrt()
    return -math.sqrt(d) * diff / bcast(norm_e + float(gamma), x)


class PFGMNormalisedField(Parametrisation):
    """PFGM's target: the x-part ``v = −sqrt(d)(x − D)/(sqrt(||x − D||² + t²) + γ)`` of the
    normalised field ``sqrt(d)·E/(||E|| + γ)``, ``E = −(x − D, t)`` (Poisson field only).

    The network's output is preconditioned as a denoiser and mapped through this formula, so
    the prediction stays exact as ``t → 0`` where an error in a raw output would be amplified
    by ``1/t`` in the drift. From ``n = ||v||`` the norm ``ρ = ||x − D||`` solves
    ``n (sqrt(ρ² + t²) + γ) = sqrt(d) ρ``, so the inversion to ``D`` (and to the drift
    ``(x − D)/t``) is exact (:meth:`to_denoiser`).
    """

    name = "pfgm_normalised"

    def __init__(self, field: Field, gamma: float = 5.0):
        super().__init__(field)
        if not float(gamma) >= 0:
            raise ValueError(f"objective.gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    @classmethod
    def unsupported(cls, field):
        if not (isinstance(field, PFGMPPField) and field.D == 1.0):
            return (f"PFGM's normalised field is the field of unit charges in d + 1 dimensions: "
                    f"it needs physics=poisson (or pfgmpp with D = 1), not {field.name}")
        return None

    def from_network(self, x, t, f, coefficients, sigma_data):
        return self.from_denoiser(x, t, denoiser_output(self.field, x, t, f, coefficients))

    def from_denoiser(self, x, t, denoised):
        return normalised_poisson_field(x, t, denoised, self.gamma)

    def to_denoiser(self, x, t, prediction):
        """``D = x + v (sqrt(ρ² + t²) + γ) / sqrt(d)`` with ``ρ = n (sqrt(d) γ +
        sqrt((d − n²) t² + n² γ²)) / (d − n²)``, ``n = ||v|| < sqrt(d)`` (clamped just below),
        in float64."""
        d = math.prod(x.shape[1:])
        v64 = prediction.double()
        t64 = torch.as_tensor(t, device=x.device).double().expand(x.shape[0])
        n2 = v64.flatten(1).pow(2).sum(1).clamp(max=d * (1 - 1e-12))
        n = n2.sqrt()
        g = self.gamma
        rho = n * (math.sqrt(d) * g + ((d - n2) * t64**2 + n2 * g**2).sqrt()) / (d - n2)
        scale = ((rho**2 + t64**2).sqrt() + g) / math.sqrt(d)
        return (x.double() + v64 * bcast(scale, v64)).to(x.dtype)

    def describe(self):
        return {**super().describe(), "gamma": self.gamma}


#: The built-in parametrisations by name (the ``objective=`` options that train them).
PARAMETRISATIONS: dict[str, type[Parametrisation]] = {
    p.name: p for p in (Denoiser, Velocity, PFGMNormalisedField)}


def natural_parametrisation(field: Field) -> Parametrisation:
    """The denoiser for fields with a denoiser form, the velocity otherwise."""
    return Denoiser(field) if field.has_denoiser_form else Velocity(field)


class ProbabilityFlow:
    """The generative ODE of ``model`` (``model(x, t)`` → prediction of kind
    ``parametrisation``), as solvers see it (:class:`unified_ode.solvers.base.Flow`).

    ``t`` may be a scalar tensor or ``(B,)``; every method call is one network evaluation.
    """

    def __init__(self, parametrisation: Parametrisation, model):
        self.parametrisation = parametrisation
        self.field = parametrisation.field
        self.model = model
        #: ``a(t)``, ``s(t)`` of an affine field for denoiser-form solvers, else ``None``.
        self.schedule = self.field.schedule()
        #: the field's name, for solvers' error messages
        self.name = self.field.name

    @classmethod
    def exact(cls, field: Field, data: Tensor, parametrisation: Parametrisation | None = None,
              **posterior_options) -> ProbabilityFlow:
        """The exact generative ODE of the finite data set ``data`` ``(M, *shape)``: no
        training, the ground truth for solvers and tests. ``parametrisation``: default
        :func:`natural_parametrisation`; ``posterior_options`` go to
        :class:`~unified_ode.physics.exact.ExactPosterior`."""
        from unified_ode.physics.exact import ExactPosterior

        param = parametrisation or natural_parametrisation(field)
        return cls(param, ExactPosterior(field, data, parametrisation=param,
                                         **posterior_options))

    def _times(self, x: Tensor, t: Tensor) -> Tensor:
        return torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """``dx/dt`` at ``(x, t)``."""
        tb = self._times(x, t)
        return self.parametrisation.drift(x, tb, self.model(x, tb))

    def denoiser(self, x: Tensor, t: Tensor) -> Tensor:
        """``E[y | x, t]`` (for fields without a denoiser form: the small-``t`` limit)."""
        tb = self._times(x, t)
        return self.parametrisation.to_denoiser(x, tb, self.model(x, tb))

    def perturb(self, y: Tensor, t: Tensor, *, generator=None) -> Tensor:
        """A draw ``x ~ p_t(. | y)`` of the field's kernel (no network call): how consistency
        sampling re-noises. ``t`` scalar or ``(B,)``."""
        return self.field.sample_kernel(y, self._times(y, t), generator=generator)

    def last_step(self, x: Tensor, t: Tensor) -> Tensor:
        """The exact step from ``(x, t)`` (``t = t_min``) to ``t = 0``: ``a(0) D(x, t)``."""
        tb = self._times(x, t)
        return self.field.final_state(x, tb, self.denoiser(x, t))


__all__ = ["PARAMETRISATIONS", "Denoiser", "PFGMNormalisedField", "Parametrisation",
           "ProbabilityFlow", "Velocity", "natural_parametrisation"]
