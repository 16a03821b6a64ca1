"""The step to t = 0 is exact for every field and every solver (issue 11 §2).

On the exact field of a few well-separated points, integrating from the prior with any solver
and finishing with the flow's last step ``x_0 = a(0) D(x, t_min)`` lands every sample on a
training point (nearest-point distance < 1e-5 in float64): the posterior at ``t_min`` is
concentrated on one point, whatever the field's ``a`` and ``s``. The old last step (one Euler
step from ``t_min``) is exact only when ``s ∝ t``; the tests show it stopping short on VP and
reflecting the sample for a field with ``s = t²``.
"""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import CONF
from unified_ode.parametrisation import ProbabilityFlow, Velocity
from unified_ode.physics import (
    LinearField,
    PFGMPPField,
    PoissonField,
    RadialGeneralField,
    RadialProfileField,
    VEField,
    VPField,
)
from unified_ode.physics.base import AffineField
from unified_ode.physics.noise import GaussianNoise

F64 = torch.float64
#: four training points, far apart relative to every field's kernel width at t_min
DATA = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=F64) * 1.5 - 0.75


class SquaredScale(AffineField):
    """A test-only affine field with ``a = 1``, ``s = t²`` (Gaussian noise): the drift is
    ``(2/t)(x − D)``, so one Euler step from ``t_min`` to 0 gives ``2D − x``."""

    name = "squared_scale"

    def __init__(self):
        super().__init__(noise=GaussianNoise(), t_min=0.03, t_max=9.0)

    def s(self, t):
        return t**2

    def ds(self, t):
        return 2 * t

    def t_from_sigma(self, sigma):
        return torch.as_tensor(sigma).sqrt()


FIELDS = {
    # PFGM's heavy-tailed prior puts a few draws at radius ~1e3-1e4, which the straight-ray ODE
    # brings only to R·t_min/t_max of the data by t_min (a property of the field, not of the
    # last step); PFGM clips prior radii for the same reason (physics.clip_radius)
    "poisson": lambda: PoissonField(clip_radius=(None, 100.0)),
    "pfgmpp_D128": lambda: PFGMPPField(D=128),
    "ve": VEField,
    "vp": VPField,
    "linear_gaussian": LinearField,
    "linear_uniform": lambda: LinearField(prior="uniform"),
    "radial_tanh": lambda: RadialProfileField(profile="tanh"),
    "radial_exp": lambda: RadialProfileField(profile="exp"),
    "radial_general": RadialGeneralField,
    "squared_scale": SquaredScale,
}
#: every solver config that ends with the step to t = 0 (pfgm_rk45 stops at t_min, by design)
SOLVERS = sorted(p.stem for p in (CONF / "solver").glob("*.yaml")
                 if OmegaConf.load(p).get("final_step", True)
                 and getattr(instantiate(OmegaConf.load(p)), "ode_solver", True))
#: (the consistency sampler of distilled students is not an ODE solver: it is left out)


def exact_flow(field, param_cls=None):
    return ProbabilityFlow.exact(field, DATA, param_cls(field) if param_cls else None)


def nearest_distance(x: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x, DATA).min(dim=1).values


def prior_draws(field, n=12, seed=0):
    return field.sample_prior(n, (2,), generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("solver_name", SOLVERS)
@pytest.mark.parametrize("field_name", sorted(FIELDS))
def test_every_solver_lands_on_a_training_point(field_name, solver_name):
    field = FIELDS[field_name]()
    cfg = OmegaConf.load(CONF / "solver" / f"{solver_name}.yaml")
    if "rtol" not in cfg:
        cfg.steps = 40
    solver = instantiate(cfg)
    flow = exact_flow(field)
    if solver.needs_schedule and flow.schedule is None:
        pytest.skip(f"{solver_name} needs an affine field; {field_name} is not one")
    res = solver.solve(flow, prior_draws(field), solver.time_grid(field))
    assert res.times[-1] == 0
    dist = nearest_distance(res.x)
    assert dist.max() < 1e-5, dist


@pytest.mark.parametrize("field_name", ["vp", "squared_scale", "linear_gaussian"])
def test_velocity_parametrisation_lands_too(field_name):
    """The last step converts a velocity prediction to the denoiser exactly (affine fields)."""
    field = FIELDS[field_name]()
    solver = instantiate(OmegaConf.load(CONF / "solver" / "heun.yaml"))
    res = solver.solve(exact_flow(field, Velocity), prior_draws(field, seed=1),
                       solver.time_grid(field))
    assert nearest_distance(res.x).max() < 1e-5


def test_the_old_euler_last_step_was_wrong_where_s_is_not_proportional_to_t():
    """Ground truth for the bug: from the same state at t_min, one Euler step to 0 stops short on
    VP and reflects the sample through the data point when s = t²; the exact step lands."""
    for name, check in (("vp", "short"), ("squared_scale", "reflect")):
        field = FIELDS[name]()
        flow = exact_flow(field)
        t = torch.tensor(field.t_min, dtype=F64)
        x = DATA[:1] + 0.5 * field.s(t) * torch.tensor([[1.0, -0.5]], dtype=F64)
        euler = x - field.t_min * flow.drift(x, t)
        exact = flow.last_step(x, t)
        assert nearest_distance(exact).max() < 1e-9
        if check == "short":
            remaining = (euler - DATA[:1]).norm() / (x - DATA[:1]).norm()
            assert 0.2 < remaining < 0.9, remaining  # ~45 % of the noise left behind
        else:
            torch.testing.assert_close(euler, 2 * DATA[:1] - x)
