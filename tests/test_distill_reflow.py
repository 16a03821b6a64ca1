"""Reflow distillation (issue 13): the pairs of an exact teacher land on training points, the
pair path and its exact one-step student, the student's loss, the resumable pair cache keyed by
teacher, solver, NFE and seed; a real reflow student of the fixture run through ``train.py``
and ``sample.py`` (slow).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from tests.conftest import run_script
from tests.distill_teachers import F64, FIXTURE, TINY, TrainData, exact_teacher, tiny_data
from unified_ode.distill import PairCache, Reflow
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
from unified_ode.solvers import Euler, Heun


@pytest.mark.parametrize("field", [VEField(), PFGMPPField(D=128), LinearField()],
                         ids=lambda f: f.name)
def test_reflow_pairs_of_an_exact_teacher_land_on_training_points(tmp_path, field):
    data = tiny_data()
    method = Reflow("exact", Heun(steps=18), pairs=40, chunk=16, seed=1)
    objective = DenoiserObjective()
    objective.bind(field)
    method.bind(objective, field)
    method.prepare(exact_teacher(field, data), tmp_path, TrainData(data))
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
    method.prepare(exact_teacher(field, data), tmp_path, TrainData(data))
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
