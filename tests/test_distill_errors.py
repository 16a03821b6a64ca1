"""Distillation errors before any work (issue 13): a missing teacher, a teacher without a
checkpoint or of another data shape or physics, a field without a denoiser form, a student
network that cannot start from the teacher's weights.
"""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import compose_config
from tests.distill_teachers import FIXTURE, SMALL_NET
from unified_ode.app.build import build_module
from unified_ode.errors import UserError


def _student(tmp_path, *overrides):
    return compose_config("train", [f"run_dir={tmp_path / 'student'}", *SMALL_NET,
                                    *overrides])


def test_missing_teacher_run_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_module(_student(tmp_path, "distill=reflow", f"distill.teacher={tmp_path}/nope"))
    with pytest.raises(UserError, match="needs a teacher"):
        build_module(_student(tmp_path, "distill=reflow"))


def test_teacher_without_checkpoint_is_a_clear_error(tmp_path):
    run = tmp_path / "teacher"
    shutil.copytree(FIXTURE, run)
    (run / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(UserError, match="no checkpoint"):
        build_module(_student(tmp_path, "distill=reflow", f"distill.teacher={run}"))
    assert not (tmp_path / "student").exists()  # nothing was generated


def test_teacher_of_another_data_shape_or_physics_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="shape"):
        build_module(_student(tmp_path, "distill=reflow", f"distill.teacher={FIXTURE}",
                              "dataset=digits", "network=mlp"))
    with pytest.raises(UserError, match="physics differs"):
        build_module(_student(tmp_path, "distill=reflow", f"distill.teacher={FIXTURE}",
                              "physics=ve"))
    assert not (tmp_path / "student").exists()


def test_field_without_denoiser_form_fails_for_consistency(tmp_path):
    with pytest.raises(UserError, match="denoiser form"):
        build_module(_student(tmp_path, "distill=consistency", "distill.teacher=exact",
                              "physics=radial_general"))


def test_other_student_network_fails_init_from_teacher_but_trains_afresh(tmp_path):
    with pytest.raises(UserError, match="network differs"):
        build_module(_student(tmp_path, "distill=reflow", f"distill.teacher={FIXTURE}",
                              "network.width=32", "distill.pairs=8", "distill.chunk=8"))
    module, _ = build_module(_student(tmp_path, "distill=reflow", f"distill.teacher={FIXTURE}",
                                      "network.width=32", "distill.init_from_teacher=false",
                                      "distill.pairs=8", "distill.chunk=8",
                                      "distill.solver.steps=2"))
    assert module.objective.teacher.weights == "ema"  # the teacher run's EMA weights
    assert module.parametrisation.name == "denoiser"
