"""The teacher of a distillation: a trained run (or the exact field), loaded and frozen.

``distill.teacher=<run dir>`` reads the run's config with
:func:`~unified_ode.app.runs.load_run_config` (old runs are upgraded), builds its module and
loads its EMA weights from ``checkpoints/last.ckpt`` (``weights_only``); every parameter is
frozen. ``distill.teacher=exact`` is the exact field of the student's own training set (no
checkpoint; for tests and ground truth). Everything that can be wrong with the teacher is a
:class:`~unified_ode.errors.UserError` raised here, before any pair is generated or any step
is trained.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from unified_ode.errors import UserError
from unified_ode.parametrisation import ProbabilityFlow

#: ``distill.teacher`` value that selects the exact field of the student's training set.
EXACT = "exact"


@dataclass
class Teacher:
    """A frozen teacher.

    flow: its generative ODE (:class:`~unified_ode.parametrisation.ProbabilityFlow`);
    key: a hash that identifies its weights (sha256 of the checkpoint file, or of the exact
    field's data and physics); source: the run directory or ``"exact"``; weights: ``"ema"``,
    ``"raw"`` or ``"exact"``.
    """

    flow: ProbabilityFlow
    key: str
    source: str
    weights: str

    @property
    def field(self):
        return self.flow.field

    def to(self, device) -> Teacher:
        """Move the teacher's model to ``device`` (in place); returns ``self``."""
        self.flow.model.to(device)
        return self

    def describe(self) -> dict:
        return {"teacher": self.source, "teacher_key": self.key, "teacher_weights": self.weights,
                "teacher_prediction": self.flow.parametrisation.name}


def file_sha256(path: str | Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _plain(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if cfg is not None else {}


def physics_mismatch(teacher_physics, student_physics) -> str | None:
    """Why the student's physics config differs from the teacher's (``None``: same)."""
    a, b = _plain(teacher_physics), _plain(student_physics)
    if a == b:
        return None
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k}: teacher {a.get(k)!r} vs student {b.get(k)!r}" for k in keys)


def load_teacher(spec: str, cfg, field, datamodule) -> Teacher:
    """The frozen teacher named by ``spec`` (``distill.teacher``) for the student config
    ``cfg``, whose field is ``field`` and data module ``datamodule``.

    Errors (all before any work): no teacher given; a run directory that does not exist, is
    not a training run, or has no checkpoint; a teacher trained on another data shape or with
    another physics config than the student's.
    """
    if spec is None or str(spec) in ("", "???", "None", "null"):
        raise UserError("distillation needs a teacher: pass distill.teacher=<a training run "
                        "dir> (or distill.teacher=exact for the exact field of the data)")
    spec = str(spec)
    if spec == EXACT:
        data = datamodule.train_tensor()
        h = hashlib.sha256()
        h.update(json.dumps(field.describe(), sort_keys=True, default=str).encode())
        h.update(data.detach().cpu().contiguous().numpy().tobytes())
        return Teacher(ProbabilityFlow.exact(field, data), h.hexdigest(), EXACT, EXACT)

    from unified_ode.app.build import build_module
    from unified_ode.app.runs import default_checkpoint, load_run_config, load_weights

    run = Path(spec)
    if not run.is_dir():
        raise UserError(f"distill.teacher={spec!r} does not exist. Pass the run directory that "
                        "train.py wrote for the teacher (outputs/<date>/<time>/), or "
                        "distill.teacher=exact.")
    tcfg, _ = load_run_config(run)
    ckpt = default_checkpoint(run)  # a UserError when the run has no checkpoint
    reason = physics_mismatch(tcfg.get("physics"), cfg.get("physics"))
    if reason is not None:
        raise UserError(f"the student's physics differs from the teacher's ({reason}): a "
                        "student starts from the teacher's prior and follows its time, so "
                        "train it with the teacher's physics (drop the physics overrides, or "
                        f"repeat the teacher's, see {run / '.hydra' / 'overrides.yaml'}).")
    teacher_cfg = OmegaConf.masked_copy(tcfg, [k for k in tcfg if k != "distill"])
    module, tdata = build_module(teacher_cfg)
    if tuple(tdata.data_shape) != tuple(datamodule.data_shape):
        raise UserError(f"the teacher {spec!r} was trained on data of shape "
                        f"{tuple(tdata.data_shape)}, the student's dataset has shape "
                        f"{tuple(datamodule.data_shape)}: distil with the teacher's dataset.")
    ema = load_weights(module, ckpt, f"the teacher's network={tcfg.network.get('_target_')}",
                       ema=True)
    module.eval()
    module.requires_grad_(False)
    return Teacher(module.flow(), file_sha256(ckpt), str(run), "ema" if ema else "raw")
