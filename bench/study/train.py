"""Training: each run is ``train.py`` in a subprocess, in its own run directory.

A finished run (marker ``case_study_train.json``, which records the overrides it was trained
with) is reused; an interrupted one (``checkpoints/last.ckpt``, no marker) is continued with
``resume=true``; a run directory trained with other settings is refused, never overwritten.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

from .plan import Run
from .util import CONF, ROOT, log, write_json

TRAIN_MARKER = "case_study_train.json"
TRAIN_LOG = "case_study_train.out"


def last_checkpoint(run: Run):
    from unified_ode.app.runs import LAST_CKPT

    return run.run_dir / LAST_CKPT


def app_resume_guard(run: Run) -> None:
    """The app's own run-directory guard, as ``train.py resume=true`` applies it to ``run``'s
    overrides (the model, data, optimiser and seed must match the saved config). The one
    place the study calls it (:func:`unified_ode.app.runs.resume_checkpoint`)."""
    from hydra import compose, initialize_config_dir

    from unified_ode.app.runs import resume_checkpoint
    from unified_ode.errors import UserError

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train",
                      overrides=[*run.overrides, f"run_dir={run.run_dir}", "resume=true"])
    try:
        resume_checkpoint(run.run_dir, cfg)
    except UserError as err:
        raise SystemExit(f"{run.run_dir} holds an unfinished run this study cannot continue: "
                         f"{err}\nIt is never overwritten: pass a new --root for a study "
                         "with other settings.") from err


def check_reusable(run: Run) -> None:
    """Refuses (SystemExit) a run directory that this study may not reuse or continue:
    a finished run trained with other overrides (the study's marker), or an unfinished one
    the app's guard would not resume. ``main`` checks every run before anything trains."""
    marker = run.run_dir / TRAIN_MARKER
    if marker.is_file():
        info = json.loads(marker.read_text())
        if info["overrides"] != run.overrides:
            raise SystemExit(
                f"{run.run_dir} was trained with other overrides:\n  {info['overrides']}\n"
                f"this study asks for:\n  {run.overrides}\nIt is never overwritten: pass a "
                "new --root for a study with other settings.")
    elif last_checkpoint(run).is_file():
        app_resume_guard(run)


def read_marker(run: Run) -> bool:
    """Marks ``run`` trained (with its recorded training time) when its marker exists."""
    marker = run.run_dir / TRAIN_MARKER
    if marker.is_file():
        run.status, run.train_seconds = "trained", json.loads(marker.read_text())["seconds"]
        return True
    return False


def train_command(run: Run) -> list[str]:
    resume = last_checkpoint(run).is_file()
    return [sys.executable, str(ROOT / "train.py"), *run.overrides,
            f"hydra.run.dir={run.run_dir}"] + (["resume=true"] if resume else [])


def train(run: Run, dry_run: bool = False) -> None:
    """Trains ``run`` (or continues it from ``last.ckpt``); a finished run is reused. The run
    directory has passed :func:`check_reusable`. ``train.py``'s output goes to
    ``<run>/case_study_train.out``; a failure is logged with its tail and marks the run
    failed (the study goes on)."""
    if read_marker(run):
        return
    cmd = train_command(run)
    resume = cmd[-1] == "resume=true"
    log(f"[train] {run.dataset}/{run.field}/seed{run.seed}" + (" (resuming)" if resume else "")
        + f": {shlex.join(cmd[1:])}")
    if dry_run:
        return
    run.run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with open(run.run_dir / TRAIN_LOG, "a") as out:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (run.run_dir / TRAIN_LOG).read_text()[-1500:]
        log(f"[train] {run.dataset}/{run.field}/seed{run.seed} FAILED ({proc.returncode}) "
            f"after {seconds:.0f} s; the report marks it. Log {run.run_dir / TRAIN_LOG}:\n"
            f"{tail}")
        run.status = "failed"
        return
    write_json(run.run_dir / TRAIN_MARKER,
               {"overrides": run.overrides, "seconds": seconds, "resumed": resume})
    run.status, run.train_seconds = "trained", seconds
    log(f"[train] {run.dataset}/{run.field}/seed{run.seed} done in {seconds:.1f} s")
