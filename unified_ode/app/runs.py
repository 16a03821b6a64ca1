"""Run directories: where a training run's config and checkpoints live, and loading them back."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from unified_ode.app.compat import upgrade_config, upgrade_overrides
from unified_ode.errors import UserError

CONFIG_FILE = Path(".hydra") / "config.yaml"
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
LAST_CKPT = Path("checkpoints") / "last.ckpt"


def load_run_config(run_dir: str | Path) -> tuple[DictConfig, list[str]]:
    """The saved (unresolved) config of a training run and the overrides it was started with."""
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"run directory {str(run)!r} does not exist. Pass run=<dir> with a "
                        "directory that train.py wrote (see outputs/<date>/<time>/).")
    cfg_path = run / CONFIG_FILE
    if not cfg_path.is_file():
        raise UserError(f"{str(run)!r} is not a training run directory: {CONFIG_FILE} is "
                        "missing. Pass the directory that train.py printed at its start.")
    overrides_path = run / OVERRIDES_FILE
    overrides = list(OmegaConf.load(overrides_path)) if overrides_path.is_file() else []
    # runs written before the objective= group are read in today's layout
    return upgrade_config(OmegaConf.load(cfg_path)), upgrade_overrides([str(o) for o in overrides])


def default_checkpoint(run_dir: str | Path) -> Path:
    path = Path(run_dir) / LAST_CKPT
    if not path.is_file():
        raise UserError(f"no checkpoint at {str(path)!r}. Train longer (checkpoints are written "
                        "at the end of training), or pass ckpt_path=<file.ckpt>.")
    return path


def read_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint, loaded safely (``weights_only=True``) and checked to hold a
    ``state_dict``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist. Pass ckpt_path=<file.ckpt> "
                        "or run=<run dir> holding checkpoints/last.ckpt.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise UserError(f"cannot read checkpoint {str(path)!r} as a weights-only file "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0]}). Is it a "
                        "checkpoint written by unified_ode, and complete?") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"{str(path)!r} is not a Lightning checkpoint (no 'state_dict').")
    return ckpt


def load_state_dict(path: str | Path) -> dict:
    """The ``state_dict`` of a Lightning checkpoint, loaded safely (``weights_only=True``)."""
    return read_checkpoint(path)["state_dict"]


def load_weights(module: torch.nn.Module, path: str | Path, network_desc: str, *,
                 ema: bool = False) -> bool:
    """Load a checkpoint into ``module`` (the file is read once); with ``ema``, its EMA
    weights when it holds them (:data:`~unified_ode.lit.ema.EMA_KEY`), else the raw ones.
    Returns whether the EMA weights were loaded. A mismatch with the configured network is a
    :class:`UserError` that names the differing parameters."""
    from unified_ode.lit.ema import EMA_KEY

    ckpt = read_checkpoint(path)
    state = ckpt["state_dict"]
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs network {tuple(v.shape)}"
             for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatches: " + "; ".join(wrong[:3]))
        if missing:
            parts.append(f"{len(missing)} parameters missing from the checkpoint "
                         f"(e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected parameters (e.g. {unexpected[0]})")
        raise UserError(f"checkpoint {str(path)!r} does not match the requested network "
                        f"({network_desc}): " + ", ".join(parts) + ". Drop your network "
                        "overrides so the run's own network is used, or pass the checkpoint "
                        "of a run with this network.")
    ema_state = ckpt.get(EMA_KEY) if ema else None
    module.load_state_dict(state if ema_state is None else ema_state, strict=True)
    return ema_state is not None
