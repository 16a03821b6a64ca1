"""OmegaConf resolvers of the command-line apps. Imports only the standard library and
OmegaConf, so that ``sample.py --help`` and ``--cfg job`` need neither torch nor Lightning."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf


def sample_dir(out_dir, run) -> str:
    """Hydra resolver ``uode_sample_dir``: where a sampling job writes (a new directory)."""
    if out_dir:
        return str(out_dir)
    stamp = datetime.now()
    if run and Path(str(run)).is_dir():  # a mistyped run dir is reported, never created
        return str(Path(str(run)) / "samples" / stamp.strftime("%Y-%m-%d_%H-%M-%S"))
    return str(Path("samples") / stamp.strftime("%Y-%m-%d") / stamp.strftime("%H-%M-%S"))


def sqlite_url(directory: str, name: str = "optuna.db") -> str:
    """Hydra resolver ``unified_ode.sqlite``: ``sqlite:///<directory>/<name>`` (absolute),
    creating ``directory`` — where ``conf/hparams_search/optuna.yaml`` keeps an Optuna study, so
    an interrupted search resumes (Optuna's ``load_if_exists``) when started again with the same
    ``hydra.sweep.dir``. The sweeper opens the database before Hydra creates the sweep
    directory, hence the ``mkdir``."""
    path = Path(directory).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / name}"


def register_resolvers() -> None:
    """Register, once, ``uode_sample_dir`` (``conf/sample.yaml``'s ``hydra.run.dir``), the
    ``--help`` resolvers ``uode_help_groups`` and ``uode_help_settings`` (``conf/hydra/help/``)
    and ``unified_ode.sqlite`` (``conf/hparams_search/optuna.yaml``)."""
    from unified_ode.app.help import groups_help, settings_help

    for name, fn in (("uode_sample_dir", sample_dir), ("uode_help_groups", groups_help),
                     ("uode_help_settings", settings_help), ("unified_ode.sqlite", sqlite_url)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=name == "uode_sample_dir")
