"""Progressive distillation (issue 13): the round's target for one point and for several,
rounds halving the steps and surviving a checkpoint, clear errors; a real student through
``train.py`` and ``sample.py`` at its final steps (slow).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import run_script
from tests.distill_teachers import F64, TINY, TrainData, exact_teacher, tiny_data
from unified_ode.errors import UserError
from unified_ode.networks import MLP
from unified_ode.networks.precond import Preconditioned
from unified_ode.physics import LinearField, PFGMPPField, RadialGeneralField, VEField, VPField
from unified_ode.solvers import Heun


def ddim(steps, final_step=False):
    from unified_ode.solvers import DPMSolverPP

    return DPMSolverPP(steps=steps, order=1, final_step=final_step)


def progressive(field, data, *, steps=8, rounds=2, per_round=3):
    from unified_ode.distill import ProgressiveDistillation
    from unified_ode.objectives import DenoiserObjective

    objective = DenoiserObjective()
    param = objective.bind(field)
    method = ProgressiveDistillation("exact", ddim(steps), rounds=rounds,
                                     steps_per_round=per_round)
    method.bind(objective, field)
    method.prepare(exact_teacher(field, data), None, TrainData(data))
    net = Preconditioned(MLP(data_shape=[2], width=8, depth=1, time_embed_dim=8), param)
    return method, net


@pytest.mark.parametrize("field", [VEField(), PFGMPPField(D=128), LinearField(), VPField()],
                         ids=lambda f: f.name)
def test_progressive_target_of_one_point_is_the_point_and_one_step_lands_on_two(field):
    """One data point: the exact denoiser is the point and DDIM is exact, so the target
    denoiser of any student interval is the point itself (float64 rounding); for several points
    the student's one DDIM step with the target lands on the teacher's two steps."""
    from unified_ode.distill.progressive import ddim_denoiser_target

    g = torch.Generator().manual_seed(0)
    one = tiny_data(1)
    method, net = progressive(field, one)
    _, target, _, i = method.pieces(net.double(), field, one.expand(16, 2).clone(), generator=g)
    assert len(torch.unique(i)) > 1  # several student intervals
    torch.testing.assert_close(method.parametrisation.to_denoiser(None, None, target),
                               one.expand(16, 2), rtol=0, atol=1e-9)
    data = tiny_data(12)
    method, _ = progressive(field, data)
    grid = method.grid
    for k in range(4):  # round 0: 4 student intervals of the 8-step grid
        t = torch.full((5,), float(grid[2 * k]), dtype=F64)
        t_next = torch.full((5,), float(grid[2 * k + 2]), dtype=F64)
        x = field.sample_kernel(data[:5], t, generator=g)
        x2 = ddim(8).solve(method.teacher.flow, x, grid[[2 * k, 2 * k + 1, 2 * k + 2]]).x
        target = ddim_denoiser_target(field, x, t, t_next, x2)
        one_step = ddim(1).solve(_ConstantDenoiser(field, target), x,
                                 grid[[2 * k, 2 * k + 2]]).x
        torch.testing.assert_close(one_step, x2, rtol=1e-10, atol=1e-10)


class _ConstantDenoiser:
    """A flow whose denoiser is a fixed tensor (for one solver step)."""

    def __init__(self, field, denoised):
        self.schedule, self.field, self.denoised = field, field, denoised

    def denoiser(self, x, t):
        return self.denoised


def test_progressive_rounds_halve_the_steps_and_the_round_survives_a_checkpoint():
    field, data = VEField(), tiny_data(12)
    method, net = progressive(field, data, steps=8, rounds=2, per_round=3)
    y = data[:8].float()
    seen = []
    for _ in range(8):
        loss = method(net, field, y, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(loss) and loss.requires_grad
        seen.append(method.student_steps())
    assert seen == [4, 4, 4, 2, 2, 2, 2, 2]  # 2 rounds: 8 -> 4 -> 2, the last one kept
    assert method.round == 1 and method.final_steps == 2
    # round 1's teacher is a frozen copy of the student when round 0 ended
    assert all(not p.requires_grad for p in method.round_teacher.parameters())
    state = method.checkpoint_state()
    fresh, _ = progressive(field, data, steps=8, rounds=2, per_round=3)
    fresh.restore_checkpoint_state(state, net)
    assert (fresh.calls, fresh.round, fresh.student_steps()) == (8, 1, 2)
    for name, value in method.round_teacher.state_dict().items():
        assert torch.equal(fresh.round_teacher.state_dict()[name], value)


def test_progressive_errors_are_clear():
    from unified_ode.distill import ProgressiveDistillation
    from unified_ode.objectives import DenoiserObjective

    with pytest.raises(UserError, match="order: 1"):
        ProgressiveDistillation("exact", Heun(steps=8))
    with pytest.raises(UserError, match="multiple of 8"):
        ProgressiveDistillation("exact", ddim(12), rounds=3)
    objective = DenoiserObjective()
    objective.bind(VEField())
    method = ProgressiveDistillation("exact", ddim(8, final_step=True), rounds=2)
    with pytest.raises(UserError, match="nested grids"):
        method.bind(objective, VEField())
    method = ProgressiveDistillation("exact", ddim(8), rounds=2)
    with pytest.raises(UserError, match="denoiser form"):
        method.bind(objective, RadialGeneralField())


@pytest.mark.slow
def test_train_a_progressive_student_of_the_exact_field_and_sample_at_its_final_steps(tmp_path):
    """train.py distill=progressive (8 -> 4 -> 2 DDIM steps) then sample.py at NFE 2; the
    checkpoint holds the round and the round's teacher."""
    student = tmp_path / "student"
    run_script("train.py", *TINY, "physics=ve", "distill=progressive", "distill.teacher=exact",
               "dataset.n_train=64", "dataset.batch_size=32", "distill.solver.steps=8",
               "distill.rounds=2", "distill.steps_per_round=10", "trainer.max_steps=24",
               "callbacks.checkpoint.every_n_train_steps=24", "trainer.val_check_interval=24",
               f"hydra.run.dir={student}")
    state = torch.load(student / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=True)["distill_state"]
    assert (state["calls"], state["round"]) == (24, 1) and state["teacher"]
    out = tmp_path / "s"
    proc = run_script("sample.py", f"run={student}", "n=32", f"out_dir={out}")
    assert "NFE: 2" in proc.stdout
    samples = np.load(out / "samples.npz")["samples"]
    assert samples.shape == (32, 2) and np.isfinite(samples).all()
