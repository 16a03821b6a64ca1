"""The distillation interface: an objective-like loss that trains a student from a teacher.

A method is configured by the ``distill=`` group (conf/distill/) and built in
:func:`unified_ode.distill.build_distillation`:

1. ``bind(student_objective, field)`` returns the student's parametrisation (the field's own:
   the ``objective=`` option's, or, for consistency distillation, the consistency function)
   and checks the field (a :class:`UserError` for a field the method cannot distil);
2. ``check_teacher(teacher)`` and ``prepare(teacher, run_dir, datamodule)`` do everything that
   comes before training (reflow's pair generation), after every check has passed;
3. ``method(model, field, y)`` is the scalar loss of the student ``model`` on a batch, exactly
   like an :class:`~unified_ode.objectives.Objective`'s, so the student module is an ordinary
   :class:`~unified_ode.lit.GenerativeODE` whose ``flow()`` samples it.

The teacher is held here, not in the Lightning module: it is no submodule, so it is neither
trained nor written into the student's checkpoints. State a method keeps between steps (the
consistency target network) goes into checkpoints under :data:`DISTILL_KEY` through
:meth:`Distillation.checkpoint_state` / :meth:`Distillation.restore_checkpoint_state`, which
:class:`~unified_ode.lit.GenerativeODE`'s checkpoint hooks call, so a resumed run continues it.
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar

import torch
from torch import Tensor

from unified_ode.errors import UserError

#: ``distill.time_law`` choices: where on ``[t_min, t_max]`` the student is trained.
TIME_LAWS = ("field", "uniform", "log_uniform")
#: checkpoint key of a method's own training state (:meth:`Distillation.checkpoint_state`)
DISTILL_KEY = "distill_state"


class Distillation(abc.ABC):
    """Base of the ``distill=`` methods (see the module docstring).

    ``teacher``: ``distill.teacher`` (a run directory or ``"exact"``); ``solver``: the solver
    that integrates the teacher (a :class:`~unified_ode.solvers.Solver`).
    """

    name: ClassVar[str]
    #: True when the method needs the field's denoiser form (``D = E[y | x, t]``).
    needs_denoiser_form: ClassVar[bool] = False

    def __init__(self, teacher: str, solver):
        from unified_ode.solvers import Solver

        if not isinstance(solver, Solver):
            raise UserError("distill.solver must be a solver config (_target_: "
                            f"unified_ode.solvers.<Name>), got {type(solver).__name__}")
        self.teacher_spec = None if teacher is None else str(teacher)
        self.solver = solver
        self.teacher = None
        self.parametrisation = None
        self.student_objective = None

    def check_field(self, field) -> None:
        if self.needs_denoiser_form and not field.has_denoiser_form:
            raise UserError(f"distill={self.name} needs a field with a denoiser form (an "
                            f"affine kernel x = a(t) y + s(t) eps); physics={field.name} has "
                            "none. Use distill=reflow, which works for every field.")

    @abc.abstractmethod
    def bind(self, student_objective, field):
        """The student's parametrisation of ``field`` (see the module docstring)."""

    def check_teacher(self, teacher) -> None:
        """Raise a :class:`UserError` when this method cannot use ``teacher``."""
        self.check_field(teacher.field)

    def prepare(self, teacher, run_dir, datamodule) -> None:
        """Work before training (after every check); keeps the teacher."""
        self.teacher = teacher

    @abc.abstractmethod
    def __call__(self, model, field, y: Tensor, *, generator=None) -> Tensor:
        """Scalar loss of the student ``model`` on the clean batch ``y`` ``(B, *shape)``."""

    def checkpoint_state(self) -> dict:
        """The method's own training state for a checkpoint (tensors and plain values; empty:
        nothing to save). Not the teacher, which is reloaded from ``distill.teacher``."""
        return {}

    def restore_checkpoint_state(self, state: dict, model) -> None:
        """Restore what :meth:`checkpoint_state` returned, for the student ``model`` (the
        module's network, already holding the checkpoint's weights)."""
        if state:
            raise UserError(f"the checkpoint holds distill={self.name} state "
                            f"({', '.join(sorted(state))}) that this method does not keep: "
                            "resume it with the distill= method it was trained with")

    # the Objective interface the module and services use ---------------------------------
    def sample_time(self, field, n: int, *, generator=None, device=None) -> Tensor:
        return self.student_objective.sample_time(field, n, generator=generator, device=device)

    def describe(self) -> dict:
        out = {"objective": self.parametrisation.name if self.parametrisation else None,
               "distill": self.name, "teacher_solver": self.solver.describe()}
        if self.teacher is not None:
            out.update(self.teacher.describe())
        return out


def draw_times(law: str, field, n: int, *, p_t_max: float = 0.0, objective=None,
               generator=None, device=None, dtype=torch.float32) -> Tensor:
    """``(n,)`` training times on ``[t_min, t_max]``: ``law`` is ``"field"`` (the objective's
    law), ``"uniform"`` or ``"log_uniform"``; a fraction ``p_t_max`` of them is ``t_max``
    exactly (the time a one-step sampler evaluates the student at)."""
    if law not in TIME_LAWS:
        raise UserError(f"unknown distill.time_law={law!r}; choose one of {', '.join(TIME_LAWS)}")
    if law == "field":
        t = objective.sample_time(field, n, generator=generator, device=device)
    else:
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        if law == "uniform":
            t = field.t_min + u * (field.t_max - field.t_min)
        else:
            lo, hi = math.log(field.t_min), math.log(field.t_max)
            t = torch.exp(lo + u * (hi - lo))
    t = t.to(dtype)
    if p_t_max > 0:
        top = torch.rand(n, generator=generator, device=device) < p_t_max
        t = torch.where(top, torch.full_like(t, field.t_max), t)
    return t.clamp(min=field.t_min, max=field.t_max)
