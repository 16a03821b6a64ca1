"""Consistency distillation (issue 13): the boundary condition, a zero loss for the teacher's
exact ODE map, the EMA target network and its checkpoint state, the consistency sampler; a
real student of the exact field sampled at NFE 1, 2, 4, and its resume (slow).
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_script
from tests.distill_teachers import F64, TINY, TrainData, exact_teacher, tiny_data
from unified_ode.distill import ConsistencyDistillation, ConsistencyObjective, Reflow
from unified_ode.distill.consistency import check_boundary
from unified_ode.errors import UserError
from unified_ode.networks import MLP
from unified_ode.networks.precond import Preconditioned
from unified_ode.objectives import DenoiserObjective
from unified_ode.parametrisation import ProbabilityFlow
from unified_ode.physics import LinearField, PFGMPPField, PoissonField, VEField, VPField
from unified_ode.solvers import ConsistencySampler, Euler, Heun


@pytest.mark.parametrize("field", [VEField(), PoissonField(), PFGMPPField(D=128), VPField(),
                                   LinearField()], ids=lambda f: f.name)
def test_consistency_boundary_condition_holds_exactly(field):
    objective = ConsistencyObjective()
    param = objective.bind(field)
    net = Preconditioned(MLP(data_shape=[2], width=16, depth=1, time_embed_dim=8), param,
                         sigma_data=0.5)
    torch.nn.init.normal_(net.net.out[-1].weight, std=1.0)  # a large, arbitrary output
    x = 3 * torch.randn(64, 2)
    assert torch.equal(check_boundary(param, net, x), torch.zeros(64))
    if float(field.a(torch.tensor(field.t_min))) == 1.0:
        t_min = torch.full((64,), field.t_min)
        assert torch.equal(net(x, t_min), x)
    # away from t_min the network matters
    t = torch.full((64,), 0.5 * field.t_max)
    assert (net(x, t) - x * field.input_scale(t)[:, None]).abs().max() > 1e-3


class TeacherMap(torch.nn.Module):
    """The teacher's own ODE map to t_min on the consistency grid: from ``(x, t_k)`` the teacher
    solver's steps ``t_k -> t_{k-1} -> ... -> t_0`` (``t_0 = t_min``), in data scale."""

    def __init__(self, method, field):
        super().__init__()
        self.method, self.field = method, field

    def forward(self, x, t):
        grid = self.method.grid.to(x.dtype)
        out = torch.empty_like(x)
        for tk in torch.unique(t):
            rows = t == tk
            k = int(torch.argmin((grid - tk).abs()))
            y = x[rows]
            if k > 0:
                y = self.method.solver.solve(self.method.teacher.flow, y, grid[: k + 1].flip(0)).x
            out[rows] = y * self.field.input_scale(tk)
        return out


@pytest.mark.parametrize("field", [VEField(), PFGMPPField(D=128), LinearField()],
                         ids=lambda f: f.name)
def test_consistency_loss_is_zero_for_the_teachers_exact_ode_map(field):
    data = tiny_data(8)
    objective = ConsistencyObjective()
    objective.bind(field)
    method = ConsistencyDistillation("exact", Heun(steps=1), intervals=6)
    method.bind(objective, field)
    method.prepare(exact_teacher(field, data), None, TrainData(data))
    y = data.repeat(4, 1)
    g = torch.Generator().manual_seed(0)
    exact_map = TeacherMap(method, field)
    prediction, target, n = method.pieces(exact_map, field, y, generator=g)
    assert len(torch.unique(n)) > 2
    assert (prediction - target).abs().max() < 1e-10
    assert method(exact_map, field, y, generator=g).item() < 1e-20
    # a student that is not the map has a positive loss
    param = objective.parametrisation
    net = Preconditioned(MLP(data_shape=[2], width=16, depth=1, time_embed_dim=8), param,
                         sigma_data=1.0).double()
    fresh = ConsistencyDistillation("exact", Heun(steps=1), intervals=6)
    fresh.bind(objective, field)
    fresh.prepare(exact_teacher(field, data), None, TrainData(data))
    assert fresh(net, field, y, generator=g).item() > 1e-3


def test_target_network_is_an_ema_of_the_student():
    field = VEField()
    objective = ConsistencyObjective()
    param = objective.bind(field)
    method = ConsistencyDistillation("exact", Heun(steps=1), intervals=4, target_ema=0.9)
    method.bind(objective, field)
    net = Preconditioned(MLP(data_shape=[2], width=8, depth=1, time_embed_dim=8), param)
    target = method.update_target(net)
    before = [p.clone() for p in target.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    method.update_target(net)
    for b, p in zip(before, target.parameters(), strict=True):
        torch.testing.assert_close(p, b + 0.1)
        assert not p.requires_grad


def test_target_network_round_trips_through_the_checkpoint_state():
    """The saved target is what a fresh method restores (not a copy of the student), and
    state that does not fit is a clear error."""
    field = VEField()
    objective = ConsistencyObjective()
    param = objective.bind(field)
    net = Preconditioned(MLP(data_shape=[2], width=8, depth=1, time_embed_dim=8), param)
    method = ConsistencyDistillation("exact", Heun(steps=1), intervals=4, target_ema=0.9)
    method.bind(objective, field)
    assert method.checkpoint_state() == {}
    method.update_target(net)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    method.update_target(net)
    state = method.checkpoint_state()
    fresh = ConsistencyDistillation("exact", Heun(steps=1), intervals=4, target_ema=0.9)
    fresh.bind(objective, field)
    fresh.restore_checkpoint_state(state, net)
    for name, value in method.target.state_dict().items():
        assert torch.equal(fresh.target.state_dict()[name], value)
    assert not torch.equal(next(fresh.target.parameters()), next(net.parameters()))
    assert all(not p.requires_grad for p in fresh.target.parameters())
    other = Preconditioned(MLP(data_shape=[2], width=16, depth=1, time_embed_dim=8), param)
    with pytest.raises(UserError, match="does not fit the student's network"):
        fresh.restore_checkpoint_state(state, other)
    with pytest.raises(UserError, match="unknown entries"):
        fresh.restore_checkpoint_state({**state, "extra": 1}, net)
    reflow = Reflow("exact", Heun(steps=1), pairs=8)
    with pytest.raises(UserError, match="does not keep"):
        reflow.restore_checkpoint_state(state, net)


def test_module_checkpoint_hooks_save_restore_and_ignore_distill_state(capsys):
    """GenerativeODE stores the method's state under distill_state and restores it; an
    ordinary objective writes none and ignores one (a run started from a student)."""
    from unified_ode.distill.base import DISTILL_KEY
    from unified_ode.lit import GenerativeODE

    field = VEField()
    objective = ConsistencyObjective()
    param = objective.bind(field)
    method = ConsistencyDistillation("exact", Heun(steps=1), intervals=4)
    method.bind(objective, field)
    net = Preconditioned(MLP(data_shape=[2], width=8, depth=1, time_embed_dim=8), param)
    module = GenerativeODE(field, net, method, Euler(steps=1), (2,))
    ckpt = {}
    module.on_save_checkpoint(ckpt)
    assert DISTILL_KEY not in ckpt  # no target before the first step
    method.update_target(net)
    module.on_save_checkpoint(ckpt)
    assert set(ckpt[DISTILL_KEY]) == {"target"}
    method.target = None
    module.on_load_checkpoint(ckpt)
    assert method.target is not None and method.target is not net
    plain = DenoiserObjective()
    plain_param = plain.bind(field)
    other = GenerativeODE(field, Preconditioned(MLP(data_shape=[2], width=8, depth=1,
                                                    time_embed_dim=8), plain_param),
                          plain, Euler(steps=1), (2,))
    empty = {}
    other.on_save_checkpoint(empty)
    assert empty == {}
    other.on_load_checkpoint(ckpt)
    assert "is not used: this run has no distill= method" in capsys.readouterr().out


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_consistency_sampler_uses_steps_evaluations_and_renoises_with_the_kernel(steps):
    field, data = VEField(), tiny_data(6)
    flow = ProbabilityFlow.exact(field, data)  # its denoiser stands in for a consistency fn
    sampler = ConsistencySampler(steps=steps, seed=0)
    times = sampler.time_grid(field)
    assert len(times) == steps + 1 and times[0] == field.t_max and times[-1] == 0
    assert times[-2] > 10 * field.t_min  # never re-noised to t_min
    x_T = field.sample_prior(50, (2,), generator=torch.Generator().manual_seed(1)).to(F64)
    result = sampler.solve(flow, x_T, times)
    assert result.nfe == steps
    assert torch.isfinite(result.x).all()
    with pytest.raises(ValueError, match="final_step"):
        ConsistencySampler(final_step=False)


@pytest.mark.slow
def test_train_a_consistency_student_of_the_exact_field_and_sample_at_nfe_1_2_4(tmp_path):
    student = tmp_path / "student"
    run_script("train.py", *TINY, "physics=ve", "distill=consistency", "distill.teacher=exact",
               "dataset.n_train=64", "dataset.batch_size=32", "distill.intervals=8",
               "network.width=32",
               f"hydra.run.dir={student}")
    for steps in (1, 2, 4):
        out = tmp_path / f"s{steps}"
        proc = run_script("sample.py", f"run={student}", f"solver.steps={steps}", "n=32",
                          f"out_dir={out}")
        assert f"NFE: {steps}" in proc.stdout
        info = json.loads((out / "sample_info.json").read_text())
        assert info["objective"]["objective"] == "consistency"
        assert info["solver"]["solver"] == "consistency"


# 4 steps per epoch (256 points, batches of 64): an interruption at N = 4 is an epoch boundary,
# where resuming is bitwise exact (tests/test_resume.py).
N = 4
RESUME = ["physics=ve", "distill=consistency", "distill.teacher=exact", "distill.intervals=8",
          "dataset.n_train=256", "dataset.n_heldout=64", "dataset.batch_size=64",
          "network.width=16", "network.depth=1", "network.time_embed_dim=8",
          "callbacks.metrics.n_samples=64", "callbacks.metrics.batch_size=64",
          f"trainer.val_check_interval={N}", f"callbacks.checkpoint.every_n_train_steps={N}",
          "~callbacks.figures", "trainer.enable_model_summary=false"]


@pytest.mark.slow
def test_resumed_consistency_run_continues_the_saved_target_network(tmp_path):
    """N steps, then ``resume=true`` to 2N, ends with the same target network (and student) as
    2N steps at once: the target is saved in the checkpoint and restored, not re-initialised
    from the student."""
    from tests.conftest import compose_plain
    from tests.training_runs import restored_environment
    from unified_ode.app.train import run_training
    from unified_ode.distill.base import DISTILL_KEY

    def train(run_dir, *over):
        cfg = compose_plain("train", [*RESUME, f"run_dir={run_dir}", *over])
        with restored_environment():
            run_training(cfg)
        return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                          weights_only=True)

    full = train(tmp_path / "full", f"trainer.max_steps={2 * N}")
    half = train(tmp_path / "resumed", f"trainer.max_steps={N}")
    resumed = train(tmp_path / "resumed", f"trainer.max_steps={2 * N}", "resume=true")
    assert resumed["global_step"] == full["global_step"] == 2 * N
    target, half_target = full[DISTILL_KEY]["target"], half[DISTILL_KEY]["target"]
    assert set(target) == set(resumed[DISTILL_KEY]["target"])
    for name, value in target.items():
        assert torch.equal(value, resumed[DISTILL_KEY]["target"][name]), name
    for name, value in full["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name
    # the target lags the student, and moved during the second half
    student = {k.removeprefix("model."): v for k, v in half["state_dict"].items()}
    assert any(not torch.equal(v, student[k]) for k, v in half_target.items() if k in student)
    assert any(not torch.equal(v, half_target[k]) for k, v in target.items())
