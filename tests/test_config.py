"""Every option of every config group composes, and composes into objects."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from tests.conftest import CONF, compose_config

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir())
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


def test_groups_present():
    for group in ("physics", "network", "solver", "dataset", "trainer", "logger", "callbacks"):
        assert group in GROUPS


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes(group, option, tmp_path):
    overrides = [f"{group}={option}", f"hydra.run.dir={tmp_path}"]
    cfg = compose_config("train", overrides)
    assert group in cfg or group in ("experiment", "hparams_search")


def test_defaults():
    cfg = compose_config("train")
    choices = cfg.hydra.runtime.choices
    assert choices["physics"] == "poisson"
    assert choices["network"] == "mlp"
    assert choices["dataset"] == "toy2d"
    assert choices["solver"] == "heun"
    assert choices["trainer"] == "cpu"
    assert choices["logger"] == "csv"


@pytest.mark.parametrize("group", ["physics", "solver", "dataset"])
def test_group_options_instantiate(group):
    for path in sorted((CONF / group).glob("*.yaml")):
        cfg = compose_config("train", [f"{group}={path.stem}"])
        obj = instantiate(cfg[group])
        assert obj is not None


def test_sample_config_composes():
    cfg = compose_config("sample", ["network=exact", "n=10"])
    assert cfg.n == 10
