"""Reading run directories written by earlier versions of unified_ode.

Before the ``objective=`` config group, the objective was ``physics.objective`` (``denoiser``,
``velocity`` or ``pfgm``) and PFGM's settings were ``physics.pfgm.*``; solvers had a
``record_every`` setting. A saved config and its
training overrides are rewritten to today's layout when a run is loaded, so that old runs
still sample (tested with tests/fixtures/runs_v0/).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict


def _objective_class(legacy: str):
    """Today's objective class of a legacy ``physics.objective`` value (imported lazily: the
    command-line checks that read run configs run before torch is imported)."""
    from unified_ode.objectives import (
        DenoiserObjective,
        PFGMNormalisedObjective,
        VelocityObjective,
    )

    objectives = {c.name: c for c in (DenoiserObjective, VelocityObjective,
                                      PFGMNormalisedObjective)}
    name = PFGMNormalisedObjective.name if legacy == "pfgm" else legacy
    if name not in objectives:
        raise ValueError(f"unknown legacy physics.objective={legacy!r}")
    return objectives[name]


def upgrade_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` in today's layout: ``physics.objective``/``physics.pfgm`` moved into a top-level
    ``objective``; ``solver.record_every`` (now an argument of each solve) dropped."""
    cfg = cfg.copy()
    solver = cfg.get("solver")
    if solver is not None and "record_every" in solver:
        with open_dict(cfg):
            cfg.solver.pop("record_every")
    physics = cfg.get("physics")
    if "objective" in cfg or physics is None or "objective" not in physics:
        return cfg
    with open_dict(cfg):
        legacy = str(cfg.physics.pop("objective"))
        cls = _objective_class(legacy)
        pfgm = cfg.physics.pop("pfgm", None)
        objective = {"_target_": f"{cls.__module__}.{cls.__name__}"}
        if legacy == "pfgm" and pfgm is not None:  # PFGM's settings moved with it
            objective.update(OmegaConf.to_container(pfgm))
        cfg.objective = objective
    return cfg


def upgrade_overrides(overrides: list[str]) -> list[str]:
    """Old command-line overrides rewritten: ``physics.objective=X`` -> ``objective=<option>``
    (first, so that the options below apply to it), ``physics.pfgm.K=V`` -> ``objective.K=V``;
    ``solver.record_every=K`` dropped."""
    head, rest = [], []
    for o in overrides:
        if o.startswith("solver.record_every="):
            continue
        if o.startswith("physics.objective="):
            head.append("objective=" + _objective_class(o.split("=", 1)[1]).name)
        elif o.startswith("physics.pfgm."):
            rest.append("objective." + o[len("physics.pfgm."):])
        else:
            rest.append(o)
    return head + rest
