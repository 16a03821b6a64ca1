"""The parametrisation object (issue 11 §1): every conversion between the network output, the
denoiser, the drift and the exact prediction, for every field it supports; the objective=
config group; and old run directories (physics.objective) that still sample."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.conftest import CONF, run_script
from unified_ode.app.build import build_module
from unified_ode.errors import UserError
from unified_ode.networks import MLP
from unified_ode.networks.precond import Preconditioned
from unified_ode.parametrisation import (
    PARAMETRISATIONS,
    Denoiser,
    PFGMNormalisedField,
    ProbabilityFlow,
    Velocity,
)
from unified_ode.physics import (
    ExactPosterior,
    LinearField,
    PFGMPPField,
    PoissonField,
    RadialGeneralField,
    RadialProfileField,
    VEField,
    VPField,
)
from unified_ode.physics.base import Field

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "runs_v0"
AFFINE = [PoissonField, lambda: PFGMPPField(D=8), VEField, VPField, LinearField,
          lambda: LinearField(prior="uniform"), RadialProfileField]


def states(field, n=24, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(n, d, generator=g, dtype=F64)
    lo, hi = field.t_min, min(field.t_max, 10.0)
    t = lo + (hi - lo) * torch.rand(n, generator=g, dtype=F64)
    den = torch.randn(n, d, generator=g, dtype=F64)
    return x, t, den


@pytest.mark.parametrize("factory", AFFINE)
@pytest.mark.parametrize("name", sorted(PARAMETRISATIONS))
def test_round_trips_and_drift_for_every_supported_field(name, factory):
    """prediction = from_denoiser(D) gives back D (to_denoiser) and the field's drift of D."""
    field = factory()
    cls = PARAMETRISATIONS[name]
    if cls.unsupported(field) is not None:
        with pytest.raises(ValueError, match=field.name):
            cls(field)
        return
    param = cls(field)
    x, t, den = states(field)
    pred = param.from_denoiser(x, t, den)
    torch.testing.assert_close(param.to_denoiser(x, t, pred), den, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(param.drift(x, t, pred), field.drift_from_denoiser(x, t, den),
                               rtol=1e-7, atol=1e-7)


def test_support_is_decided_by_the_field_not_by_strings():
    assert Denoiser.unsupported(RadialGeneralField()) is not None
    assert Velocity.unsupported(RadialGeneralField()) is None
    assert PFGMNormalisedField.unsupported(PoissonField()) is None
    assert PFGMNormalisedField.unsupported(PFGMPPField(D=2)) is not None


@pytest.mark.parametrize("name", sorted(PARAMETRISATIONS))
def test_exact_prediction_is_consistent_with_the_posterior(name):
    """The exact model's prediction maps back to the posterior mean, and its drift is the
    posterior-weighted conditional velocity (what sampling integrates), for every form."""
    field = PoissonField()
    data = torch.randn(40, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    param = PARAMETRISATIONS[name](field)
    exact = ExactPosterior(field, data, parametrisation=param)
    x, t, _ = states(field, d=2)
    pred = exact(x, t)
    mean = exact.posterior_mean(x, t)
    torch.testing.assert_close(param.to_denoiser(x, t, pred), mean, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(param.drift(x, t, pred), exact.posterior_velocity(x, t),
                               rtol=1e-7, atol=1e-7)


def test_preconditioned_network_is_the_same_output_in_every_form():
    """The same raw network gives a denoiser D, a velocity that is exactly the drift of D, and
    a normalised field that maps back to D; the coefficients come back with the output."""
    field = PoissonField()
    net = MLP([2], width=16, depth=1, time_embed_dim=8).double()
    x, t, _ = states(field, d=2)
    den_model = Preconditioned(net, Denoiser(field), sigma_data=0.5)
    d, coefficients = den_model(x, t, return_coefficients=True)
    torch.testing.assert_close(coefficients[1], field.denoiser_coefficients(x, t, 0.5)[1])
    v = Preconditioned(net, Velocity(field), sigma_data=0.5)(x, t)
    torch.testing.assert_close(v, field.drift_from_denoiser(x, t, d))
    pfgm = PFGMNormalisedField(field, gamma=3.0)
    p = Preconditioned(net, pfgm, sigma_data=0.5)(x, t)
    torch.testing.assert_close(pfgm.to_denoiser(x, t, p), d, rtol=1e-6, atol=1e-6)


def test_a_field_missing_a_method_fails_at_construction_with_its_name():
    class Incomplete(Field):
        name = "incomplete"

        def sample_kernel(self, y, t, *, generator=None):
            return y

    with pytest.raises(TypeError, match="conditional_velocity"):
        Incomplete(t_min=0.01, t_max=1.0)


def test_nothing_outside_the_parametrisation_compares_prediction_strings():
    """The issue's check: the strings "denoiser"/"velocity" appear in the package only in the
    parametrisation module (configs aside)."""
    hits = []
    for path in (ROOT / "unified_ode").rglob("*.py"):
        if path.name == "parametrisation.py":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"""["'](denoiser|velocity)["']""", line):
                hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not hits, hits


# --- the objective= group ---------------------------------------------------------------------
def composed(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose("train", overrides=[*overrides, "network.width=16", "network.depth=1"])


@pytest.mark.parametrize(("overrides", "expected"), [
    ((), Denoiser),
    (("physics=linear",), Velocity),
    (("physics=linear", "objective=denoiser"), Denoiser),
    (("physics=radial_general",), Velocity),
    (("physics=vp", "objective=velocity"), Velocity),
    (("objective=pfgm_normalised", "objective.gamma=2.5"), PFGMNormalisedField),
])
def test_objective_group_composes_and_builds(overrides, expected):
    module, _ = build_module(composed(*overrides))
    assert type(module.parametrisation) is expected
    assert type(module.model.parametrisation) is expected
    if expected is PFGMNormalisedField:
        assert module.parametrisation.gamma == 2.5
    assert "objective" not in module.field.describe()


def test_objective_a_field_cannot_take_names_the_valid_choices():
    with pytest.raises(UserError, match=r"objective=pfgm_normalised cannot train physics=vp.*"
                                        r"Valid choices for this field: objective=denoiser, "
                                        r"objective=velocity\."):
        build_module(composed("physics=vp", "objective=pfgm_normalised"))


# --- run directories written before the objective= group --------------------------------------
@pytest.mark.parametrize("name", ["pfgm", "linear"])
def test_old_run_directories_still_sample(tmp_path: Path, name: str):
    """Runs written by the code of commit 7f79daf (physics.objective, solver.record_every) load
    and sample the same points as that code did (seed 3, 64 samples, Heun 18 steps)."""
    run = tmp_path / name
    shutil.copytree(FIXTURES / name, run)
    out = tmp_path / "samples"
    run_script("sample.py", f"run={run}", "n=64", "batch_size=64", "seed=3", f"out_dir={out}")
    got = np.load(out / "samples.npz")["samples"]
    expected = np.load(FIXTURES / name / "expected_samples_seed3_n64.npy")
    # float32 preconditioning now (was float64): differences at the 1e-6 level
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    info = json.loads((out / "sample_info.json").read_text())
    assert info["objective"]["objective"] == {"pfgm": "pfgm_normalised",
                                              "linear": "velocity"}[name]
    if name == "pfgm":
        assert info["objective"]["gamma"] == 4.0


def test_flow_of_an_exact_model_is_what_solvers_see():
    flow = ProbabilityFlow.exact(VEField(), torch.randn(8, 2, dtype=F64))
    assert flow.schedule is not None and flow.name == "ve"
    assert ProbabilityFlow.exact(RadialGeneralField(), torch.randn(8, 2, dtype=F64)).schedule \
        is None


@pytest.mark.parametrize("factory", [PoissonField, lambda: PFGMPPField(D=8),
                                     lambda: PFGMPPField(D=128)])
@pytest.mark.parametrize("shape", [(2,), (1, 8, 8)])
def test_heavy_tailed_preconditioning_matches_its_definition_in_float64(factory, shape):
    """The heavy-tailed coefficients (float32, as networks use them) against their definition
    evaluated term by term in float64 over the same strata of the precision w: with
    ``v = sd² + σ²/w`` and the level's posterior ∝ ``v^(-d/2) exp(−‖x~‖²/(2v))``,
    ``c_skip = E[sd²/v]``, ``c_out² = E[sd² σ²/(w v)]``, ``c_in = E[v]^(-1/2)``,
    ``c_noise = ln(E[σ²/w])/8``; from t_min (where c_out is tiny beside c_skip ≈ 1) to t_max."""
    field = factory()
    sd = 0.5
    g = torch.Generator().manual_seed(0)
    n = 64
    t = torch.logspace(math.log10(field.t_min), math.log10(field.t_max), n, dtype=F64)
    x = field.sample_kernel(sd * torch.randn(n, *shape, generator=g, dtype=F64), t, generator=g)
    got = field.denoiser_coefficients(x.float(), t.float(), sd)

    w = field.noise.mixture_precisions().to(F64)
    sigma = (field.sigma(t) * torch.ones(n, dtype=F64))[:, None]
    xs = x * (1.0 / field.a(t)).view(-1, *[1] * len(shape))
    d = math.prod(shape)
    v = sd**2 + sigma**2 / w
    logits = -0.5 * d * v.log() - 0.5 * xs.flatten(1).pow(2).sum(1, keepdim=True) / v
    post = torch.softmax(logits, dim=1)
    want = ((post * sd**2 / v).sum(1), (post * sd**2 * sigma**2 / (w * v)).sum(1).sqrt(),
            (post * v).sum(1).rsqrt(), (post * sigma**2 / w).sum(1).log() / 8)
    for name, a, b in zip(("c_skip", "c_out", "c_in", "c_noise"), got, want):
        assert a.dtype == torch.float32, name
        torch.testing.assert_close(a.double(), b, rtol=2e-5, atol=1e-6, msg=name)
