"""Every option of every config group composes, and composes into the object it names."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import CONF, compose_config
from unified_ode.errors import UserError
from unified_ode.physics.base import Field
from unified_ode.solvers.base import Solver

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir())
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
#: groups that train.yaml leaves unselected by default (`null`): bundles and sweeps
OPTIONAL = {"experiment", "hparams_search", "distill"}


def test_every_group_is_selected_by_train_yaml():
    """No orphan folder: every config group is in train.yaml's defaults list (the launcher
    folder lives under hydra/)."""
    defaults = OmegaConf.load(CONF / "train.yaml").defaults
    listed = {next(iter(d)) for d in defaults if not isinstance(d, str)}
    missing = [g for g in GROUPS if g != "hydra" and g not in listed]
    assert not missing, missing


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes(group, option, tmp_path):
    overrides = [f"{group}={option}", f"hydra.run.dir={tmp_path}"]
    cfg = compose_config("train", overrides)
    if group == "hydra":
        return
    assert cfg.hydra.runtime.choices[group] == option
    if group not in OPTIONAL:
        assert group in cfg


def test_defaults():
    cfg = compose_config("train")
    choices = cfg.hydra.runtime.choices
    assert choices["physics"] == "poisson"
    assert choices["objective"] == "denoiser"
    assert choices["network"] == "mlp"
    assert choices["dataset"] == "toy2d"
    assert choices["solver"] == "heun"
    assert choices["trainer"] == "cpu"
    assert choices["logger"] == "csv"


def _options(group):
    return [p.stem for p in sorted((CONF / group).glob("*.yaml"))]


@pytest.mark.parametrize("option", _options("physics"))
def test_physics_options_build_valid_fields(option):
    """Each physics option builds its field, whose prior draws have the data's shape and a
    finite log-density, and whose time range is the config's."""
    cfg = compose_config("train", [f"physics={option}"])
    field = instantiate(cfg.physics)
    assert isinstance(field, Field)
    assert (field.t_min, field.t_max) == (cfg.physics.t_min, cfg.physics.t_max)
    x = field.sample_prior(8, (2,), generator=torch.Generator().manual_seed(0),
                           dtype=torch.float64)
    assert x.shape == (8, 2) and torch.isfinite(field.prior_log_prob(x)).all()


@pytest.mark.parametrize("option", _options("solver"))
def test_solver_options_build_solvers_with_their_grid(option):
    """Each solver option builds a solver whose grid on the default field is strictly
    decreasing from t_max, with the step to 0 exactly when final_step says so."""
    cfg = compose_config("train", [f"solver={option}"])
    solver = instantiate(cfg.solver)
    assert isinstance(solver, Solver)
    grid = solver.time_grid(instantiate(cfg.physics))
    assert torch.all(grid[1:] < grid[:-1]) and len(grid) == solver.steps + 1
    assert (grid[-1] == 0) == solver.final_step


@pytest.mark.parametrize("option", _options("dataset"))
def test_dataset_options_build_data_modules(option):
    dm = instantiate(compose_config("train", [f"dataset={option}"]).dataset)
    assert dm.kind in ("points", "images") and len(dm.data_shape) in (1, 3)


@pytest.mark.parametrize("option", _options("objective"))
@pytest.mark.parametrize("physics", ["poisson", "vp", "radial_general"])
def test_objective_options_bind_or_name_the_valid_choices(option, physics):
    cfg = compose_config("train", [f"physics={physics}", f"objective={option}"])
    objective = instantiate(cfg.objective)
    field = instantiate(cfg.physics)
    if objective.parametrisation_class.unsupported(field) is None:
        assert objective.bind(field).field is field
    else:
        with pytest.raises(UserError, match="Valid choices for this field"):
            objective.bind(field)


def test_sample_config_composes():
    cfg = compose_config("sample", ["network=exact", "n=10"])
    assert cfg.n == 10 and cfg.hydra.runtime.choices["objective"] == "denoiser"
