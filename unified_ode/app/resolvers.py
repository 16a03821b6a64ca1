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


def register_resolvers() -> None:
    """Register ``uode_sample_dir`` (used by ``conf/sample.yaml``'s ``hydra.run.dir``) once."""
    if not OmegaConf.has_resolver("uode_sample_dir"):
        OmegaConf.register_new_resolver("uode_sample_dir", sample_dir, use_cache=True)
