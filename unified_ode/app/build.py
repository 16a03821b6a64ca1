"""Turn a composed config into objects. Every object comes from ``hydra.utils.instantiate``."""

from __future__ import annotations

import functools

from hydra.utils import instantiate
from omegaconf import DictConfig

from unified_ode.errors import UserError
from unified_ode.lit.module import GenerativeODE
from unified_ode.networks.precond import Preconditioned
from unified_ode.objectives import build_objective


def build_datamodule(cfg: DictConfig):
    return instantiate(cfg.dataset)


def build_field(cfg: DictConfig):
    return instantiate(cfg.physics)


def build_solver(cfg: DictConfig):
    return instantiate(cfg.solver)


def is_exact(cfg: DictConfig) -> bool:
    return str(cfg.network.get("_target_", "")).endswith("ExactPosterior")


def build_model(cfg: DictConfig, field, datamodule):
    """The predictor ``model(x, t)``: the preconditioned network, or the exact posterior of the
    data module's training set when ``network=exact``."""
    if cfg.network.get("_partial_", False):
        factory = instantiate(cfg.network)
        if not isinstance(factory, functools.partial):
            raise UserError("a network config with _partial_: true must name a factory")
        return factory(field=field, data=datamodule.train_tensor())
    net = instantiate(cfg.network, data_shape=list(datamodule.data_shape))
    return Preconditioned(net, field, sigma_data=datamodule.sigma_data)


def build_module(cfg: DictConfig, datamodule=None) -> tuple[GenerativeODE, object]:
    """``(module, datamodule)`` for a training or sampling config."""
    datamodule = datamodule or build_datamodule(cfg)
    field = build_field(cfg)
    model = build_model(cfg, field, datamodule)
    objective = build_objective(field, sigma_data=datamodule.sigma_data)
    module = GenerativeODE(field, model, objective, build_solver(cfg),
                           data_shape=datamodule.data_shape, optim=cfg.get("optim"))
    return module, datamodule


def build_callbacks(cfg: DictConfig) -> list:
    return [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]


def build_loggers(cfg: DictConfig) -> list:
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
