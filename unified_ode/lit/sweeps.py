"""Hyper-parameter sweeps: where an Optuna study persists.

``conf/hparams_search/optuna.yaml`` stores the study in ``<sweep dir>/optuna.db`` through the
``unified_ode.sqlite`` resolver, so an interrupted search resumes (Optuna's
``load_if_exists``) when started again with the same ``hydra.sweep.dir``. The resolver creates
the directory: the sweeper opens the database before Hydra creates the sweep directory.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf


def sqlite_url(directory: str, name: str = "optuna.db") -> str:
    """``sqlite:///<directory>/<name>`` (absolute), creating ``directory``."""
    path = Path(directory).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / name}"


def register_resolvers() -> None:
    """Register ``${unified_ode.sqlite:<dir>}`` (idempotent)."""
    if not OmegaConf.has_resolver("unified_ode.sqlite"):
        OmegaConf.register_new_resolver("unified_ode.sqlite", sqlite_url)
