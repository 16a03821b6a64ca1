"""Run directories: where a training run's config and checkpoints live, and loading them back.

Claims (see :mod:`unified_ode.app.claims`) keep two processes out of one directory; the guard
:func:`resume_checkpoint` decides whether a directory may be trained into; the readers load a
run's config (its ``_target_`` entries restricted to :data:`TRUSTED_TARGETS`) and checkpoints
(``weights_only``: no code runs).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, ListConfig, OmegaConf

from unified_ode.app.claims import (  # noqa: F401 - re-exported: the public names live here
    LOCK_FILE,
    claim_new_dir,
    claim_run_dir,
    discard_unused_run_dir,
    release_run_dir,
)
from unified_ode.app.compat import upgrade_config, upgrade_overrides
from unified_ode.errors import UserError

if TYPE_CHECKING:
    import torch

CONFIG_FILE = Path(".hydra") / "config.yaml"
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
LAST_CKPT = Path("checkpoints") / "last.ckpt"
RESOLVED_CONFIG = "config_resolved.yaml"
#: Config sections that define the model and its training; a resume must not change them.
RESUME_MUST_MATCH = ("objective", "coupling", "physics", "network", "dataset", "optim",
                     "lr_warmup_steps", "seed")
#: ``_target_`` prefixes a saved run config may name (a run directory is data, possibly from
#: someone else: ``_target_: os.system`` in it must not run).
TRUSTED_TARGETS = ("unified_ode.", "torch.optim.", "torch.nn.", "lightning.Trainer",
                   "lightning.pytorch.Trainer", "lightning.pytorch.callbacks.",
                   "lightning.pytorch.loggers.", "lightning.pytorch.plugins.",
                   "lightning.pytorch.strategies.")


def resume_checkpoint(run_dir: str | Path, cfg: DictConfig) -> Path | None:
    """The run-directory guard: the checkpoint a training run in ``run_dir`` continues from.

    * ``resume=true``: ``run_dir/checkpoints/last.ckpt``, which must exist, and the run's
      saved :data:`RESUME_MUST_MATCH` sections must equal ``cfg``'s (:func:`check_same_config`).
    * otherwise a directory holding ``last.ckpt`` is refused (never overwritten);
      ``ckpt_path=<file>`` (must exist) starts a new run from that file; else ``None``.

    Raises :class:`UserError` with what to type instead. Used by ``train.py`` before Hydra
    writes anything into the directory, and by :func:`unified_ode.app.train.run_training`.
    """
    run_dir = Path(run_dir)
    last = run_dir / LAST_CKPT
    if bool(cfg.get("resume", False)):
        if not last.is_file():
            raise UserError(f"resume=true but {last} does not exist. Resume a run directory "
                            "that holds checkpoints/last.ckpt (hydra.run.dir=<that dir>), or "
                            "drop resume=true to start a new run.")
        check_same_config(run_dir, cfg)
        return last
    if last.exists():
        raise UserError(f"{run_dir} already holds a checkpoint ({LAST_CKPT}); refusing to "
                        "overwrite it. Continue it with resume=true, start a new run (the "
                        "default run dir is time-stamped) or pass hydra.run.dir=<a new "
                        "directory>.")
    if cfg.get("ckpt_path"):
        path = Path(str(cfg.ckpt_path))
        if not path.is_file():
            raise UserError(f"ckpt_path={str(path)!r} does not exist.")
        return path
    return None


def check_same_config(run_dir: str | Path, cfg: DictConfig) -> None:
    """Refuse (:class:`UserError`) when ``cfg``'s :data:`RESUME_MUST_MATCH` sections differ from
    the run's saved ``config_resolved.yaml`` (no saved file: nothing to compare)."""
    saved_path = Path(run_dir) / RESOLVED_CONFIG
    if not saved_path.is_file():
        return
    saved = OmegaConf.load(saved_path)
    now = {key: _plain(cfg.get(key)) for key in RESUME_MUST_MATCH}
    diffs = [key for key in RESUME_MUST_MATCH if _plain(saved.get(key)) != now[key]]
    if diffs:
        raise UserError(f"resume=true: this command's {', '.join(diffs)} config differs from "
                        f"the run's ({saved_path}). Repeat the run's original overrides (see "
                        f"{saved_path}); only trainer, logger and callbacks settings may "
                        "change on resume.")


def _plain(x):
    if isinstance(x, (DictConfig, ListConfig)):
        return OmegaConf.to_container(x, resolve=True)
    return x


def configured_targets(conf_dir: str | Path | None = None) -> set[str]:
    """Every ``_target_`` written in the project's config tree (``conf/**/*.yaml``): a class
    you put there yourself (``_target_: mypkg.MyField``) is as trusted as the shipped ones."""
    import re

    root = Path(conf_dir) if conf_dir else Path(__file__).resolve().parents[2] / "conf"
    found = set()
    for path in root.rglob("*.yaml"):
        found.update(re.findall(r"^\s*_target_:\s*['\"]?([\w.]+)", path.read_text(),
                                re.MULTILINE))
    return found


def check_trusted_targets(cfg, source: str) -> None:
    """Refuse a loaded config any of whose ``_target_`` entries is neither under
    :data:`TRUSTED_TARGETS` nor one of :func:`configured_targets` (it would be imported and
    called on instantiation)."""
    known = None

    def walk(node, key):
        nonlocal known
        if isinstance(node, dict):
            target = node.get("_target_")
            if target is not None and not str(target).startswith(TRUSTED_TARGETS):
                known = configured_targets() if known is None else known
                if str(target) not in known:
                    raise UserError(
                        f"{source}: {key + '.' if key else ''}_target_={target!r} is neither a "
                        "unified_ode, torch.optim/nn or Lightning class nor named in this "
                        "project's conf/, so the run config is not loaded (it would run that "
                        "code). If you trust this run directory, add "
                        "+trust_run_config=true.")
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{key}[{i}]")

    walk(OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg, "")


def load_run_config(run_dir: str | Path, trust: bool = False) -> tuple[DictConfig, list[str]]:
    """The saved (unresolved) config of a training run and the overrides it was started with;
    unless ``trust``, its ``_target_`` entries are checked (:func:`check_trusted_targets`)."""
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
    cfg = OmegaConf.load(cfg_path)
    if not trust:
        check_trusted_targets(cfg, str(cfg_path))
    # runs written before the objective= group are read in today's layout
    return upgrade_config(cfg), upgrade_overrides([str(o) for o in overrides])


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
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"\bGLOBAL ([\w.]+)", str(exc))
        if found is None:
            raise UserError(f"cannot read checkpoint {str(path)!r}: it is not a complete "
                            "PyTorch checkpoint file. Pass a checkpoint written by "
                            "unified_ode's train.py.") from None
        # torch's message suggests weights_only=False, i.e. running the file's code: never.
        raise UserError(f"{str(path)!r} is not a trusted checkpoint file: it names "
                        f"{found[1]}, and checkpoints hold only tensors, numbers, strings and "
                        "containers (the weights-only loader refused it; nothing in the file "
                        "was run). Pass a checkpoint written by unified_ode's train.py.") \
            from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged file
        first = (str(exc).splitlines() or [""])[0]
        raise UserError(f"cannot read checkpoint {str(path)!r} ({type(exc).__name__}: "
                        f"{first}). Is it a complete checkpoint written by unified_ode's "
                        "train.py?") from None
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


def trim_log_for_resume(metrics_csv: str | Path, step: int) -> int:
    """Drop the rows of a CSV metrics log that a run resumed from a checkpoint at global step
    ``step`` writes again, so that each step is logged once however the previous process
    ended (``kill -9`` after the checkpoint loses nothing else but leaves those rows): the
    rows of later steps, and at ``step`` itself the training step's rows (those with an
    ``epoch`` value, which Lightning adds to what ``LightningModule.log`` sends; the loss
    logged at ``step`` belongs to the step after the checkpoint). Rows that callbacks logged at
    ``step`` (evaluations made before that checkpoint was saved) stay. The file is rewritten
    atomically (temporary file, then ``os.replace``). ``step=-1`` (a fresh start in a
    directory whose earlier start died before its first checkpoint) drops every row. Returns
    the number of rows dropped."""
    import csv
    import os

    path = Path(metrics_csv)
    if not path.is_file():
        return 0
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames or [], list(reader)

    def later(row) -> bool:
        try:
            s = int(float(row.get("step") or -1))
        except ValueError:
            return False
        return s > step or (s == step and bool(row.get("epoch")))

    keep = [r for r in rows if not later(r)]
    if len(keep) == len(rows):
        return 0
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(keep)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(rows) - len(keep)
