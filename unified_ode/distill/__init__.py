"""One- and few-step students distilled from any trained field (``distill=`` group).

* ``reflow`` (:class:`Reflow`): teacher (prior, sample) pairs, cached on disk, and the
  straight interpolation between them in the field's own kernel (k-rectified flow); the
  student samples with Euler in 1 step. Every field.
* ``consistency`` (:class:`ConsistencyDistillation`): consistency distillation in the field's
  time with the boundary condition built into the parametrisation
  (:class:`ConsistencyFunction`); sampled with ``solver=consistency`` at NFE 1, 2, 4, ...
  Fields with a denoiser form.
* ``progressive`` (:class:`ProgressiveDistillation`): halve the DDIM steps per round, each
  student matching two steps of the previous model (Salimans & Ho 2022). Fields with a
  denoiser form.

:func:`build_distillation` is the one hook in :func:`unified_ode.app.build.build_module`.
"""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from unified_ode.distill.base import Distillation, draw_times
from unified_ode.distill.consistency import (
    ConsistencyDistillation,
    ConsistencyFunction,
    ConsistencyObjective,
)
from unified_ode.distill.pairs import PairCache, pair_key
from unified_ode.distill.progressive import ProgressiveDistillation
from unified_ode.distill.reflow import Reflow
from unified_ode.distill.teacher import EXACT, Teacher, load_teacher
from unified_ode.errors import UserError


def init_from_teacher(model, teacher) -> bool:
    """Copy the teacher's network weights into the student ``model`` when both are
    preconditioned networks of the same architecture (a :class:`UserError` when they differ);
    ``False`` (nothing copied) for the exact teacher."""
    from unified_ode.networks.precond import Preconditioned

    source = teacher.flow.model
    if not isinstance(source, Preconditioned):
        return False
    if not isinstance(model, Preconditioned):
        raise UserError("distill.init_from_teacher=true needs a trained student network, not "
                        "network=exact")
    own, theirs = model.net.state_dict(), source.net.state_dict()
    if own.keys() != theirs.keys() or any(own[k].shape != theirs[k].shape for k in own):
        raise UserError("distill.init_from_teacher=true but the student's network differs from "
                        "the teacher's (other layers or sizes); use the teacher's network "
                        "config or pass distill.init_from_teacher=false")
    model.net.load_state_dict(theirs)
    return True


def build_distillation(cfg: DictConfig, field, objective, model, datamodule) -> Distillation:
    """The ``distill=`` method of ``cfg`` for the student ``model`` (predicting in
    ``objective``'s parametrisation of ``field``), with its teacher loaded and frozen, the
    student initialised from it (``distill.init_from_teacher``) and the pre-training work done
    (reflow's pairs, into ``cfg.run_dir``). Every check runs before any work."""
    from omegaconf import OmegaConf

    if OmegaConf.is_missing(cfg.distill, "teacher"):
        raise UserError("distillation needs a teacher: pass distill.teacher=<a training run "
                        "dir> (or distill.teacher=exact for the exact field of the data)")
    options = {k: v for k, v in cfg.distill.items() if k != "init_from_teacher"}
    method = instantiate(DictConfig(options, flags={"allow_objects": True}))
    if not isinstance(method, Distillation):
        raise UserError(f"distill._target_ must name a unified_ode.distill method, got "
                        f"{type(method).__name__}")
    method.bind(objective, field)
    teacher = load_teacher(method.teacher_spec, cfg, field, datamodule)
    method.check_teacher(teacher)
    copied = init_from_teacher(model, teacher) if cfg.distill.get("init_from_teacher") else False
    print(f"distill={method.name}: teacher {teacher.source} ({teacher.weights} weights, "
          f"{teacher.flow.parametrisation.name}); student initialised "
          f"{'from the teacher' if copied else 'afresh'}")
    method.prepare(teacher, cfg.run_dir, datamodule)
    return method


__all__ = ["EXACT", "ConsistencyDistillation", "ConsistencyFunction", "ConsistencyObjective",
           "Distillation", "PairCache", "ProgressiveDistillation", "Reflow", "Teacher",
           "build_distillation", "draw_times",
           "init_from_teacher", "load_teacher", "pair_key"]
