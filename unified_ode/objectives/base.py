"""The objective interface: a loss that trains one parametrisation of a field.

An objective is bound to a field once (:meth:`Objective.bind`), which checks that the field can
be trained with it and returns the :class:`~unified_ode.parametrisation.Parametrisation` that
the model must predict in; the loss ``objective(model, field, y)`` then maps a clean batch
``y`` ``(B, *shape)`` to a scalar. ``model(x, t, return_coefficients=True)`` returns the
prediction and the field's preconditioning coefficients
(:class:`~unified_ode.networks.precond.Preconditioned`), so a loss weight costs nothing extra.
"""

from __future__ import annotations

import abc
from typing import ClassVar

from torch import Tensor

from unified_ode.errors import UserError
from unified_ode.parametrisation import PARAMETRISATIONS, Parametrisation


def per_sample_mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared error per sample: ``(B, *shape), (B, *shape) -> (B,)``."""
    return (a - b).flatten(1).pow(2).mean(1)


def label_kwargs(labels: Tensor | None) -> dict:
    """``{"labels": labels}`` for a class-conditional batch, ``{}`` otherwise (so an
    unconditional model is called exactly as before)."""
    return {} if labels is None else {"labels": labels}


class Objective(abc.ABC):
    """A training loss for the parametrisation :attr:`parametrisation_class`.

    ``time_law_hint``: the training-time law this objective prefers where a field leaves it
    open (the linear field's ``train_time_law: null``).
    """

    #: The ``objective=`` option name.
    name: ClassVar[str]
    parametrisation_class: ClassVar[type[Parametrisation]]
    time_law_hint: ClassVar[str | None] = None

    #: How data and noise are paired (:mod:`unified_ode.objectives.couplings`); ``None`` or
    #: ``Independent``: independent draws. Set by :meth:`set_coupling`.
    coupling = None

    def set_coupling(self, coupling) -> None:
        """Pair data and noise with ``coupling`` (checked against the field in :meth:`bind`)."""
        self.coupling = coupling

    def noisy_batch(self, field, y: Tensor, *, generator=None) -> tuple[Tensor, Tensor]:
        """``(x, t)``: training times ``(B,)`` from the field's law and kernel samples
        ``(B, *shape)`` of the clean batch ``y`` at them (:meth:`perturb`)."""
        t = self.sample_time(field, y.shape[0], generator=generator, device=y.device).to(y.dtype)
        return self.perturb(field, y, t, generator=generator), t

    def perturb(self, field, y: Tensor, t: Tensor, *, generator=None) -> Tensor:
        """Kernel samples ``x ~ p_t(· | y)`` ``(B, *shape)``: independent draws, or the noise
        draws re-paired with ``y`` by the coupling (cost: distance to the prior sample)."""
        if self.coupling is None or not self.coupling.pairs:
            return field.sample_kernel(y, t, generator=generator)
        eps = field.sample_noise(y, generator=generator)
        idx = self.coupling.pair(y, field.prior_scale() * eps, generator=generator)
        return field.kernel_from_noise(y, t, eps[idx])

    def parametrisation_options(self) -> dict:
        """Keyword arguments of the parametrisation (e.g. PFGM's ``gamma``)."""
        return {}

    def labels_unsupported(self) -> str | None:
        """Why this objective cannot train a class-conditional model (``None``: it can);
        checked when a conditional run is built, before training starts."""
        return None

    def bind(self, field) -> Parametrisation:
        """The parametrisation of ``field`` that this objective trains; a :class:`UserError`
        naming the valid ``objective=`` choices when the field cannot be trained with it."""
        if self.coupling is not None:
            reason = self.coupling.unsupported(field)
            if reason is not None:
                raise UserError(reason + ".")
        reason = self.parametrisation_class.unsupported(field)
        if reason is not None:
            valid = [n for n, p in PARAMETRISATIONS.items() if p.unsupported(field) is None]
            raise UserError(f"objective={self.name} cannot train physics={field.name}: "
                            f"{reason}. Valid choices for this field: "
                            f"{', '.join(f'objective={v}' for v in valid)}.")
        self.parametrisation = self.parametrisation_class(field, **self.parametrisation_options())
        return self.parametrisation

    def sample_time(self, field, n: int, *, generator=None, device=None) -> Tensor:
        """Training times ``(n,)`` from the field's law (with this objective's hint)."""
        return field.sample_training_time(n, generator=generator, device=device,
                                          law_hint=self.time_law_hint)

    @abc.abstractmethod
    def __call__(self, model, field, y: Tensor, *, labels: Tensor | None = None,
                 generator=None) -> Tensor:
        """Scalar loss of ``model`` on the clean batch ``y`` ``(B, *shape)``; ``labels``
        ``(B,)`` long: the batch's classes (class-conditional training, passed to
        ``model(x, t, labels=...)``)."""

    def describe(self) -> dict:
        out = {"objective": self.name, **self.parametrisation_options()}
        if self.coupling is not None:
            out.update(self.coupling.describe())
        return out
