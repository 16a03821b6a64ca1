"""Minibatch couplings (issue 19): exact OT is an optimal permutation, Sinkhorn a valid plan
sample; the coupled kernel keeps its endpoint marginals; independent changes nothing; clear
errors where a coupling does not apply."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import run_script
from unified_ode.errors import UserError
from unified_ode.objectives import (
    DenoiserObjective,
    ExactOT,
    Independent,
    PFGMNormalisedObjective,
    SinkhornOT,
    VelocityObjective,
)
from unified_ode.objectives.couplings import bisect_blocks, pair_cost, pairing_cost
from unified_ode.physics import LinearField, PFGMPPField, RadialGeneralField, VEField, VPField

FIXTURES = Path(__file__).parent / "fixtures" / "runs_v0"


def test_ot_is_the_optimal_permutation():
    """Against brute force over all 7! pairings of a small batch."""
    g = torch.Generator().manual_seed(0)
    y, z = torch.randn(7, 3, generator=g), torch.randn(7, 3, generator=g)
    perm = ExactOT().pair(y, z)
    assert sorted(perm.tolist()) == list(range(7))
    cost = pair_cost(y, z)
    best = min(sum(cost[i, p[i]] for i in range(7)) for p in itertools.permutations(range(7)))
    assert sum(cost[i, int(perm[i])] for i in range(7)) == pytest.approx(best, rel=1e-12)


def test_sinkhorn_plan_has_uniform_marginals_and_interpolates_ot_and_independent():
    g = torch.Generator().manual_seed(1)
    y, z = torch.randn(64, 2, generator=g), torch.randn(64, 2, generator=g)
    for reg in (0.05, 1.0):
        plan = torch.as_tensor(SinkhornOT(reg=reg).plan(y, z))
        torch.testing.assert_close(plan.sum(0), torch.full((64,), 1 / 64, dtype=plan.dtype),
                                   rtol=1e-3, atol=1e-6)
        torch.testing.assert_close(plan.sum(1), torch.full((64,), 1 / 64, dtype=plan.dtype),
                                   rtol=1e-3, atol=1e-6)
    idx = SinkhornOT(reg=0.05).pair(y, z, generator=torch.Generator().manual_seed(0))
    assert idx.shape == (64,) and idx.min() >= 0 and idx.max() < 64
    cost = torch.as_tensor(pair_cost(y, z))
    mean_cost = {name: float(cost[torch.arange(64), p].mean()) for name, p in (
        ("ot", ExactOT().pair(y, z)), ("sinkhorn", idx), ("independent", torch.arange(64)))}
    assert mean_cost["ot"] <= mean_cost["sinkhorn"] < mean_cost["independent"], mean_cost
    with pytest.raises(ValueError, match="reg"):
        SinkhornOT(reg=0)


def test_bisection_blocks_partition_the_batch_into_co_located_equal_halves():
    g = torch.Generator().manual_seed(6)
    y = torch.randn(300, 3, generator=g, dtype=torch.float64).numpy()
    z = torch.randn(300, 3, generator=g, dtype=torch.float64).numpy() * 2
    blocks = bisect_blocks(y, z, 64)
    assert all(len(r) == len(c) and 0 < len(r) <= 64 for r, c in blocks)
    assert sorted(i for r, _ in blocks for i in r) == list(range(300))
    assert sorted(j for _, c in blocks for j in c) == list(range(300))
    assert len(bisect_blocks(y, z, 300)) == 1
    with pytest.raises(ValueError, match="block_size"):
        bisect_blocks(y, z, 0)
    with pytest.raises(ValueError, match="block_size"):
        ExactOT(block_size=0)


def test_blocked_ot_is_a_permutation_optimal_within_blocks_and_exact_on_separated_clusters():
    g = torch.Generator().manual_seed(7)
    y, z = torch.randn(256, 2, generator=g), torch.randn(256, 2, generator=g)
    cost = torch.as_tensor(pair_cost(y, z))
    perm = ExactOT(block_size=64).pair(y, z)
    assert sorted(perm.tolist()) == list(range(256))
    rows = torch.arange(256)
    blocked, exact = float(cost[rows, perm].mean()), float(cost[rows, ExactOT().pair(y, z)].mean())
    assert exact <= blocked < 0.5 * float(cost[rows, rows].mean())
    for r, c in bisect_blocks(y.double().numpy(), z.double().numpy(), 64):
        sub = ExactOT().pair(y[r], z[c])  # the block's own optimum
        torch.testing.assert_close(cost[r, perm[r]].sum(), cost[r, c[sub.numpy()]].sum())
    # four far-apart clusters of 64 data and 64 noise points each: the bisection cuts between
    # the clusters, and so does the whole batch's optimal plan, so the two plans cost the same
    centres = torch.tensor([[-50.0, 0.0], [50.0, 0.0], [0.0, -50.0], [0.0, 50.0]])
    y = (centres[:, None] + torch.randn(4, 64, 2, generator=g)).reshape(256, 2)
    z = (centres[:, None] + torch.randn(4, 64, 2, generator=g))[torch.randperm(4, generator=g)]
    z = z.reshape(256, 2)[torch.randperm(256, generator=g)]
    cost = torch.as_tensor(pair_cost(y, z))
    torch.testing.assert_close(cost[rows, ExactOT(block_size=64).pair(y, z)].sum(),
                               cost[rows, ExactOT().pair(y, z)].sum())
    # Sinkhorn on blocks: partners are drawn within the row's block
    idx = SinkhornOT(block_size=64).pair(y, z, generator=torch.Generator().manual_seed(0))
    for r, c in bisect_blocks(y.double().numpy(), z.double().numpy(), 64):
        assert set(idx[r].tolist()) <= set(c.tolist())


def test_sinkhorn_survives_pfgms_heavy_tailed_prior():
    """A batch of 512 with PFGM's prior (draws out to |z| ~ 2.6e5, seed 0): POT's scaling
    iterations underflow on its cost (291 plan rows of zero mass, so no partner can be drawn:
    NaN row distributions); the log-domain fallback gives a finite plan
    whose row marginals are uniform (columns: within 5% after the 20 iterations that the
    test's time budget allows) and a valid pairing."""
    import warnings

    import numpy as np
    import ot

    from unified_ode.data import toy_samples
    from unified_ode.physics import PoissonField

    field = PoissonField()
    y = toy_samples("checkerboard", 512, 0).double()
    z = field.prior_scale() * field.sample_noise(y, generator=torch.Generator().manual_seed(0))
    coupling = SinkhornOT(num_iter=20)
    cost = pairing_cost(y, z)  # the cost the coupling solves
    w = np.full(512, 1 / 512)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = ot.sinkhorn(w, w, cost / cost.std(), coupling.reg, numItermax=20)
    assert (plain.sum(1) == 0).sum() > 100  # what the fallback is for
    plan = torch.as_tensor(coupling.plan(y, z))
    assert torch.isfinite(plan).all() and (plan.sum(1) > 0).all()
    torch.testing.assert_close(plan.sum(1), torch.full((512,), 1 / 512, dtype=plan.dtype))
    torch.testing.assert_close(plan.sum(0), torch.full((512,), 1 / 512, dtype=plan.dtype),
                               rtol=0.05, atol=0)
    idx = coupling.pair(y, z, generator=torch.Generator().manual_seed(0))
    assert idx.shape == (512,) and 0 <= int(idx.min()) and int(idx.max()) < 512


@pytest.mark.parametrize("coupling", [ExactOT(), ExactOT(block_size=64)], ids=["ot", "ot_b64"])
@pytest.mark.parametrize("factory", [LinearField, VEField, VPField, lambda: PFGMPPField(D=128)],
                         ids=["linear", "ve", "vp", "pfgmpp"])
def test_coupled_kernel_keeps_its_endpoint_marginals(factory, coupling):
    """At t -> 0 the coupled kernel sample is the data itself; at t_max it is the prior sample
    s(t_max)·eps up to a(t_max)·y, exactly as without coupling: the noise draws are only
    re-paired (a permutation), so the multiset of noise values is unchanged. Between the ends
    the pairing does change the marginal: the paths are shorter."""
    field = factory()
    g = torch.Generator().manual_seed(2)
    y = torch.randn(256, 2, generator=g, dtype=torch.float64) * 0.5 + 1.0
    obj = VelocityObjective()
    obj.set_coupling(coupling)
    obj.bind(field)
    eps = field.sample_noise(y, generator=torch.Generator().manual_seed(3))
    perm = obj.coupling.pair(y, field.prior_scale() * eps)
    t0 = torch.zeros(256, dtype=torch.float64)
    torch.testing.assert_close(field.kernel_from_noise(y, t0, eps[perm]), y)
    t1 = torch.full((256,), field.t_max, dtype=torch.float64)
    x_coupled = field.kernel_from_noise(y, t1, eps[perm])
    x_indep = field.kernel_from_noise(y, t1, eps)
    a_max = float(field.a(torch.tensor(field.t_max, dtype=torch.float64)))
    gap = (x_coupled.sort(0).values - x_indep.sort(0).values).abs().max()
    assert gap <= 2 * a_max * float(y.abs().max()) + 1e-12
    # intermediate t: the coupled pairs are closer (what straightens the field lines)
    tm = torch.full((256,), 0.5 * (field.t_min + field.t_max) if field.t_max <= 1 else 1.0,
                    dtype=torch.float64)
    chord = lambda e: (field.kernel_from_noise(y, tm, e) - y).norm(dim=1).mean()  # noqa: E731
    if isinstance(field, LinearField):
        assert chord(eps[perm]) < chord(eps)


def test_independent_coupling_is_the_uncoupled_objective_bit_for_bit():
    field = VEField()
    y = torch.randn(128, 2, generator=torch.Generator().manual_seed(4))
    model = lambda x, t, return_coefficients=False: (  # noqa: E731
        (x * 0.3, field.denoiser_coefficients(x, t, 0.5)) if return_coefficients else x * 0.3)
    losses = []
    for coupling in (None, Independent()):
        obj = DenoiserObjective()
        obj.set_coupling(coupling)
        obj.bind(field)
        losses.append(obj(model, field, y, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(losses[0], losses[1])


def test_couplings_refuse_fields_and_objectives_they_cannot_pair():
    obj = VelocityObjective()
    obj.set_coupling(ExactOT())
    with pytest.raises(UserError, match="coupling=ot .* physics=radial_general is not one"):
        obj.bind(RadialGeneralField())
    with pytest.raises(UserError, match="not available with objective=pfgm_normalised"):
        PFGMNormalisedObjective().set_coupling(SinkhornOT())
    independent = VelocityObjective()
    independent.set_coupling(Independent())
    independent.bind(RadialGeneralField())  # nothing to pair: fine for every field


@pytest.mark.slow
def test_coupling_independent_retrains_the_old_run_to_float_rounding(tmp_path: Path):
    """The linear fixture run (written by the code before couplings existed) retrained now with
    coupling=independent and the same overrides has the same weights: bit for bit on the CPU
    that wrote the fixture; on another CPU's float32 kernels (an AVX-512 EPYC) 17 of 1,382
    weights differ by <= 7.5e-9, while a 5 % change of the learning rate moves them by 1e-5."""
    from unified_ode.app.runs import load_run_config, read_checkpoint

    _, overrides = load_run_config(FIXTURES / "linear")
    run = tmp_path / "retrain"
    # the old defaults that have changed since: learning rate 2e-3, warm-up 100 steps
    run_script("train.py", f"hydra.run.dir={run}", *overrides, "coupling=independent",
               "optim.lr=2e-3", "lr_warmup_steps=100")
    old = read_checkpoint(FIXTURES / "linear" / "checkpoints" / "last.ckpt")["state_dict"]
    new = read_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    assert old.keys() == new.keys()
    for key in old:
        torch.testing.assert_close(new[key], old[key], rtol=0, atol=1e-7, msg=key)
    shutil.rmtree(run)


def test_bench_straightness_is_zero_on_chords_and_the_same_for_images():
    """bench/couplings.py's straightness: 0 on straight trajectories, the relative squared
    deviation of a bent one (here: a kink of squared length 0.25 at 1 of 11 states over a
    chord of squared length 1), whatever the sample shape ((K, B, d) or (K, B, C, H, W))."""
    from bench.couplings import straightness

    t = torch.linspace(0, 1, 11, dtype=torch.float64)[:, None, None]
    a, b = torch.zeros(3, 2, dtype=torch.float64), torch.zeros(3, 2, dtype=torch.float64)
    b[:, 0] = 1.0
    line = a + (b - a) * t
    assert straightness(line) == pytest.approx(0.0, abs=1e-15)
    bent = line.clone()
    bent[5, :, 1] += 0.5
    assert straightness(bent) == pytest.approx(0.25 / 11)
    assert straightness(bent.reshape(11, 3, 1, 2, 1)) == pytest.approx(0.25 / 11)
