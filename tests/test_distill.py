"""Distillation (issue 13): reflow pairs, the consistency function, the pair cache, errors, and
one real train.py -> sample.py run of a student.

Teachers are exact fields of tiny data sets (no training) or the old-layout PFGM fixture run
(tests/fixtures/runs_v0/pfgm: 4 steps of a width-16 MLP), so every test but the end-to-end
ones takes seconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import compose_config, run_script
from unified_ode.app.build import build_module
from unified_ode.distill import (
    ConsistencyDistillation,
    ConsistencyObjective,
    PairCache,
    Reflow,
    Teacher,
)
from unified_ode.distill.consistency import check_boundary
from unified_ode.errors import UserError
from unified_ode.networks import MLP
from unified_ode.networks.precond import Preconditioned
from unified_ode.objectives import DenoiserObjective, VelocityObjective
from unified_ode.parametrisation import ProbabilityFlow
from unified_ode.physics import (
    LinearField,
    PFGMPPField,
    PoissonField,
    RadialGeneralField,
    VEField,
    VPField,
)
from unified_ode.solvers import ConsistencySampler, Euler, Heun

F64 = torch.float64
FIXTURE = Path(__file__).parent / "fixtures" / "runs_v0" / "pfgm"
#: the fixture teacher's network (the student's, for init_from_teacher)
SMALL_NET = ["network.width=16", "network.depth=1", "network.time_embed_dim=8"]


class _Shape:
    """The part of a data module that a distillation method reads."""

    def __init__(self, data):
        self.data_shape = tuple(data.shape[1:])
        self._data = data

    def train_tensor(self):
        return self._data


def exact_teacher(field, data) -> Teacher:
    return Teacher(ProbabilityFlow.exact(field, data), key="exact-test", source="exact",
                   weights="exact")


def tiny_data(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=F64)


# --- reflow -----------------------------------------------------------------------------
@pytest.mark.parametrize("field", [VEField(), PFGMPPField(D=128), LinearField()],
                         ids=lambda f: f.name)
def test_reflow_pairs_of_an_exact_teacher_land_on_training_points(tmp_path, field):
    data = tiny_data()
    method = Reflow("exact", Heun(steps=18), pairs=40, chunk=16, seed=1)
    objective = DenoiserObjective()
    objective.bind(field)
    method.bind(objective, field)
    method.prepare(exact_teacher(field, data), tmp_path, _Shape(data))
    z, x = method.z.to(F64), method.x.to(F64)
    assert z.shape == x.shape == (40, 2)
    nearest = torch.cdist(x, data).min(1).values
    assert nearest.max() < 1e-3, nearest.max()
    # chunk i starts from the field's prior drawn with seed (seed, i): reproducible
    g = torch.Generator().manual_seed(1 * 1_000_003 + 1)
    torch.testing.assert_close(method.z[16:32], field.sample_prior(16, (2,), generator=g))


@pytest.mark.parametrize("field", [VEField(), PoissonField(), VPField(), LinearField(),
                                   RadialGeneralField()], ids=lambda f: f.name)
def test_reflow_path_joins_the_pair_and_the_exact_student_maps_z_to_x_in_one_step(field):
    """x_t = z at t_max and -> x at t -> 0; a student whose denoiser (or velocity) is the pair's
    along the path is the 1-step Euler map z -> x, through the field's own last step."""
    g = torch.Generator().manual_seed(0)
    z = field.sample_prior(6, (2,), generator=g).to(F64)
    x = torch.randn(6, 2, generator=g, dtype=F64)
    method = Reflow("exact", Euler(steps=1))
    t_max = torch.full((6,), field.t_max, dtype=F64)
    at_max, _ = method.path(field, z, x, t_max)
    torch.testing.assert_close(at_max, z, rtol=1e-10, atol=1e-8)
    near0, _ = method.path(field, z, x, torch.full((6,), 1e-9, dtype=F64))
    assert (near0 - x).abs().max() < 1e-4  # VP: s(t) ~ sqrt(beta_min t)

    objective = DenoiserObjective() if field.has_denoiser_form else VelocityObjective()
    param = objective.bind(field)

    class PairOracle(torch.nn.Module):  # predicts, at any (x_t, t) on a path, that path's target
        def forward(self, xt, t):
            if field.has_denoiser_form:
                return param.from_denoiser(xt, t, x)
            return method.path(field, z, x, t)[1]

    sample = Euler(steps=1).solve(ProbabilityFlow(param, PairOracle()), z,
                                  Euler(steps=1).time_grid(field))
    assert sample.nfe == 1
    torch.testing.assert_close(sample.x, x, rtol=1e-9, atol=1e-9)


def test_reflow_loss_trains_the_students_own_parametrisation(tmp_path):
    """The loss is the student's objective's weighted error on the pair path: zero for the
    oracle, positive for a network."""
    field, data = VEField(), tiny_data()
    objective = DenoiserObjective()
    param = objective.bind(field)
    method = Reflow("exact", Heun(steps=10), pairs=8, chunk=8, time_law="uniform", p_t_max=0.5)
    assert method.bind(objective, field) is param
    method.prepare(exact_teacher(field, data), tmp_path, _Shape(data))
    net = Preconditioned(MLP(data_shape=[2], width=16, depth=1, time_embed_dim=8), param,
                         sigma_data=1.0).double()
    loss = method(net, field, torch.zeros(32, 2, dtype=F64))
    assert loss.ndim == 0 and loss.item() > 0 and loss.requires_grad


# --- pair cache -------------------------------------------------------------------------
def _pairs(calls, fail_at=None):
    def make(i, m, generator):
        if fail_at is not None and i == fail_at:
            raise KeyboardInterrupt
        calls.append(i)
        z = torch.randn(m, 3, generator=generator)
        return z, 2 * z, 7

    return make


def test_pair_cache_resumes_without_duplicates_or_losses(tmp_path):
    kw = dict(teacher_key="abc", solver_desc={"solver": "heun", "steps": 4}, nfe=7, seed=3,
              chunk=4, shape=(3,))
    whole = PairCache(tmp_path / "a", **kw)
    whole.generate(18, _pairs([]))
    z_ref, x_ref = whole.load(18)

    cache = PairCache(tmp_path / "b", **kw)
    calls = []
    with pytest.raises(KeyboardInterrupt):
        cache.generate(18, _pairs(calls, fail_at=2))
    assert calls == [0, 1] and not list(cache.dir.glob("*.tmp"))
    calls = []
    stats = PairCache(tmp_path / "b", **kw).generate(18, _pairs(calls))
    assert calls == [2, 3, 4] and stats["generated"] == 3 and stats["reused"] == 2
    z, x = cache.load(18)
    assert z.shape == (18, 3)
    torch.testing.assert_close(z, z_ref, rtol=0, atol=0)
    torch.testing.assert_close(x, x_ref, rtol=0, atol=0)
    # asking again makes nothing; asking for more appends only the new chunks
    calls = []
    assert cache.generate(18, _pairs(calls))["generated"] == 0 and calls == []
    cache.generate(24, _pairs(calls))
    assert calls == [5]


@pytest.mark.parametrize("change", [{"teacher_key": "other"}, {"nfe": 9}, {"seed": 4},
                                    {"solver_desc": {"solver": "euler", "steps": 4}}])
def test_pair_cache_is_keyed_by_teacher_solver_nfe_and_seed(tmp_path, change):
    kw = dict(teacher_key="abc", solver_desc={"solver": "heun", "steps": 4}, nfe=7, seed=3,
              chunk=4, shape=(3,))
    a = PairCache(tmp_path, **kw)
    a.generate(8, _pairs([]))
    b = PairCache(tmp_path, **{**kw, **change})
    assert b.dir != a.dir and b.missing(8) == [0, 1]
    calls = []
    b.generate(8, _pairs(calls))
    assert calls == [0, 1]  # nothing of a's was taken


def test_a_chunk_of_other_pairs_is_refused_not_mixed_in(tmp_path):
    kw = dict(teacher_key="abc", solver_desc={"solver": "heun"}, nfe=7, seed=3, chunk=4,
              shape=(3,))
    a = PairCache(tmp_path, **kw)
    a.generate(8, _pairs([]))
    b = PairCache(tmp_path, **{**kw, "teacher_key": "xyz"})
    b.generate(4, _pairs([]))
    shutil.copy(a.chunk_path(1), b.chunk_path(1))  # a foreign file in b's directory
    with pytest.raises(UserError, match="another teacher"):
        b.load(8)


# --- consistency ------------------------------------------------------------------------
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
    method.prepare(exact_teacher(field, data), None, _Shape(data))
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
    fresh.prepare(exact_teacher(field, data), None, _Shape(data))
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


# --- errors before any work -------------------------------------------------------------
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


# --- a real student ---------------------------------------------------------------------
TINY = ["trainer.max_steps=30", "dataset.n_train=1024", "dataset.batch_size=128",
        "callbacks.metrics.n_samples=256", "trainer.val_check_interval=30",
        "callbacks.checkpoint.every_n_train_steps=30", *SMALL_NET]


@pytest.mark.slow
def test_train_a_reflow_student_of_a_run_and_sample_it_in_one_step(tmp_path):
    student = tmp_path / "student"
    proc = run_script("train.py", *TINY, "objective=pfgm_normalised", "objective.gamma=4.0",
                      "distill=reflow", f"distill.teacher={FIXTURE}", "distill.pairs=300",
                      "distill.chunk=100", "distill.solver.steps=4", f"hydra.run.dir={student}")
    assert "student initialised from the teacher" in proc.stdout
    assert "at NFE 1" in proc.stdout
    caches = list((student / "reflow_pairs").glob("*/chunk_*.pt"))
    assert len(caches) == 3
    meta = json.loads(next((student / "reflow_pairs").glob("*/meta.json")).read_text())
    assert meta["nfe"] == 7 and meta["solver"]["solver"] == "heun"
    out = tmp_path / "samples"
    proc = run_script("sample.py", f"run={student}", "n=64", f"out_dir={out}")
    assert "NFE: 1" in proc.stdout
    samples = np.load(out / "samples.npz")["samples"]
    assert samples.shape == (64, 2) and np.isfinite(samples).all()
    # resume reuses the cached pairs, and a second start in the same dir is refused
    again = run_script("train.py", *TINY, "objective=pfgm_normalised", "objective.gamma=4.0",
                       "distill=reflow", f"distill.teacher={FIXTURE}", "distill.pairs=300",
                       "distill.chunk=100", "distill.solver.steps=4",
                       f"hydra.run.dir={student}", check=False)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr


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


# --- progressive distillation -------------------------------------------------------------
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
    method.prepare(exact_teacher(field, data), None, _Shape(data))
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
