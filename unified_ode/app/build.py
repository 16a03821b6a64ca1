"""Turn a composed config into objects. Every object comes from ``hydra.utils.instantiate``."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from unified_ode.errors import UserError
from unified_ode.networks.precond import Preconditioned

if TYPE_CHECKING:
    from unified_ode.lit.module import GenerativeODE


def build_datamodule(cfg: DictConfig):
    return instantiate(cfg.dataset)


def build_field(cfg: DictConfig):
    return instantiate(cfg.physics)


def build_solver(cfg: DictConfig):
    return instantiate(cfg.solver)


def is_exact(cfg: DictConfig) -> bool:
    return str(cfg.network.get("_target_", "")).endswith("ExactPosterior")


def build_objective(cfg: DictConfig, field):
    """``(objective, parametrisation)``: the ``objective=`` group's loss, bound to ``field``
    (a :class:`UserError` naming the valid choices when the field cannot be trained with it)."""
    if "objective" not in cfg or cfg.objective is None:
        raise UserError("the config has no objective; pick one with objective=denoiser, "
                        "objective=velocity or objective=pfgm_normalised")
    objective = instantiate(cfg.objective)
    if cfg.get("coupling") is not None:
        objective.set_coupling(instantiate(cfg.coupling))
    return objective, objective.bind(field)


def build_model(cfg: DictConfig, parametrisation, datamodule):
    """The predictor ``model(x, t)``: the preconditioned network, or the exact posterior of the
    data module's training set when ``network=exact``; it predicts in ``parametrisation``."""
    field = parametrisation.field
    conditional = bool(getattr(datamodule, "conditional", False))
    if cfg.network.get("_partial_", False):
        factory = instantiate(cfg.network)
        if not isinstance(factory, functools.partial):
            raise UserError("a network config with _partial_: true must name a factory")
        if conditional:  # one exact posterior per class, plus all the data (issue 16)
            from unified_ode.physics.conditional import ConditionalExactPosterior

            return ConditionalExactPosterior(
                field, datamodule.train_tensor(), datamodule.train_labels(),
                num_classes=datamodule.num_classes, parametrisation=parametrisation,
                **factory.keywords)
        return factory(field=field, data=datamodule.train_tensor(),
                       parametrisation=parametrisation)
    extra = {"num_classes": datamodule.num_classes} if conditional else {}
    net = instantiate(cfg.network, data_shape=list(datamodule.data_shape), **extra)
    return Preconditioned(net, parametrisation, sigma_data=datamodule.sigma_data)


def build_module(cfg: DictConfig, datamodule=None) -> tuple[GenerativeODE, object]:
    """``(module, datamodule)`` for a training or sampling config."""
    from unified_ode.lit.module import GenerativeODE  # Lightning: imported when first needed

    datamodule = datamodule or build_datamodule(cfg)
    field = build_field(cfg)
    objective, parametrisation = build_objective(cfg, field)
    if getattr(datamodule, "conditional", False) and not is_exact(cfg):
        reason = objective.labels_unsupported()  # before any training step
        if reason is not None:
            raise UserError(reason)
    model = build_model(cfg, parametrisation, datamodule)
    if cfg.get("distill"):  # a student: the loss comes from its teacher (unified_ode.distill)
        from unified_ode.distill import build_distillation

        objective = build_distillation(cfg, field, objective, model, datamodule)
    module = GenerativeODE(field, model, objective, build_solver(cfg),
                           data_shape=datamodule.data_shape, optimizer=build_optimizer(cfg),
                           lr_warmup_steps=int(cfg.get("lr_warmup_steps") or 0))
    return module, datamodule


def build_optimizer(cfg: DictConfig):
    """``params -> optimizer`` from the ``optim`` group (a ``_partial_`` config); None when the
    config has none, or only the ``optim.name`` block of run directories written before
    ``conf/optim/`` existed (they can be sampled, not trained further)."""
    if cfg.get("optim") is None or "_target_" not in cfg.optim:
        return None
    factory = instantiate(cfg.optim)
    if not callable(factory) or isinstance(factory, torch.optim.Optimizer):
        raise UserError("optim must be a _partial_: true config of an optimizer class "
                        "(see conf/optim/adam.yaml)")
    return factory


def _instantiate_entries(cfg: DictConfig, group: str) -> list:
    """Instantiate every ``<group>.<name>`` entry (a config with ``_target_``; null: off)."""
    out = []
    for name, c in (cfg.get(group) or {}).items():
        if c is None:
            continue
        if "_target_" not in c:
            raise UserError(f"{group}.{name} has no _target_: it only sets "
                            f"{', '.join(map(str, c.keys())) or 'nothing'}, for an entry that "
                            f"the chosen {group} config does not define. Drop it with "
                            f"~{group}.{name}, or pick a {group} config that has it.")
        out.append(instantiate(c))
    return out


def build_callbacks(cfg: DictConfig) -> list:
    """The trainer's callbacks: every entry of ``cfg.callbacks`` (``~callbacks.<name>``
    removes one)."""
    return _instantiate_entries(cfg, "callbacks")


def build_loggers(cfg: DictConfig) -> list:
    """The trainer's loggers: every entry of ``cfg.logger``."""
    return _instantiate_entries(cfg, "logger")
