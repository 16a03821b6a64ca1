"""``--jobs N``: the study's independent pieces as ``N`` parallel processes, then the page.

A piece ("unit") is one (data set, field): its tuning, its seeds' retraining and scores, its
diagnostics, and for exppower the β slice. Units share nothing but each data set's references
and floors, which this process computes first (so no two workers extract the same Inception
features). Units run heaviest first (digits ≫ a toy set; exppower carries the slice) on ``N``
worker threads, each unit a subprocess of this command (``--datasets D --fields F``, its own
log in ``<root>/logs/``); every unit is resumable like the whole study. When they are done the
page is written from every finished run (``--report-only``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .presets import DIGITS, Preset
from .runs import ROOT, log
from .sweep import SWEEP_FIELD

ENTRY = ROOT / "bench" / "new_fields.py"
#: set in a unit's environment: its invocation record says so (its wall time overlaps the
#: parent's and the other units')
UNIT_ENV = "UNIFIED_ODE_STUDY_UNIT"


def weight(dataset: str, field: str) -> float:
    """Relative cost of a unit (on the medium preset a digits field cost ~7× a toy one,
    mostly its Inception passes; the β slice adds about half a field)."""
    return (7.0 if dataset == DIGITS else 1.0) * (1.5 if field == SWEEP_FIELD else 1.0)


def run_unit(preset: Preset, root: Path, dataset: str, field: str) -> tuple[str, int, Path]:
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{dataset}-{field}.log"
    cmd = [sys.executable, str(ENTRY), "--preset", preset.name, "--root", str(root),
           "--datasets", dataset, "--fields", field, "--jobs", "1",
           "--out", str(root / "units" / f"{dataset}-{field}.md")]
    log(f"start {dataset}/{field} (log: {log_path})")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", UNIT_ENV: "1"}
    with open(log_path, "a") as fh:
        code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    log(f"{'done' if code == 0 else f'FAILED (exit {code})'} {dataset}/{field}")
    return f"{dataset}/{field}", code, log_path


def run_jobs(preset: Preset, root: Path, datasets: list[str], fields: list[str], jobs: int,
             prepare) -> None:
    """Every (data set, field) unit on ``jobs`` parallel processes; ``prepare(dataset)``
    first makes each data set's references and floors. A failed unit stops the command
    after the others finish, naming its log."""
    for ds in datasets:
        prepare(ds)
    units = sorted(((ds, f) for ds in datasets for f in fields),
                   key=lambda u: -weight(*u))
    log(f"{len(units)} units on {jobs} processes")
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        outcomes = list(pool.map(lambda u: run_unit(preset, root, *u), units))
    failed = [(name, path) for name, code, path in outcomes if code != 0]
    if failed:
        raise SystemExit("failed unit(s): " + "; ".join(f"{n} (see {p})" for n, p in failed)
                         + ". Finished work is kept: run the same command again to resume.")
