"""The README's default run, timed and scored: ``python train.py`` as a new user types it.

    python bench/default_run.py                          # the default run, into a new directory
    python bench/default_run.py trainer.max_steps=2000   # any train.py overrides

Runs ``train.py`` in a fresh process (the environment as given: no ``OMP_NUM_THREADS``
is set here, the app sets its own threads from ``threads=``), then prints

* the wall time of the whole command (start-up, training, final scoring and figures),
* the training time that ``train.py`` itself reports (``trained N steps in X s``),
* the CPU time of the process (user + system, all threads),
* the final sample metrics of ``logs/metrics.csv`` (sliced Wasserstein ``sw``, ``mmd``) and
  the prior samples' own sliced Wasserstein (the baseline to beat).

A benchmark, not a test: the figures depend on the machine and its load. The README's
"Two commands" section quotes them from an idle machine.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import resource
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def final_metrics(metrics_csv: Path) -> dict[str, float]:
    """The last logged value of every sample metric column (``sw``, ``mmd``, ``prior/...``)
    in a CSV logger's ``metrics.csv``, by column name."""
    last: dict[str, float] = {}
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if value in ("", None) or not re.search(r"(^|/)(sw|mmd)", key or ""):
                    continue
                try:
                    last[key] = float(value)
                except ValueError:
                    continue
    return last


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None,
                   help="run directory (default: outputs/bench_default_run/<time>)")
    p.add_argument("overrides", nargs="*", help="train.py overrides (none: the default run)")
    args = p.parse_args(argv)
    run_dir = Path(args.out or ROOT / "outputs" / "bench_default_run"
                   / datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    if (run_dir / "checkpoints").exists():
        p.error(f"{run_dir} already holds a run; pass --out <a new directory>")
    cmd = [sys.executable, "train.py", f"hydra.run.dir={run_dir}", *args.overrides]
    print("$ " + " ".join(cmd), flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", file=sys.stderr)
        print(f"train.py failed with exit status {proc.returncode}", file=sys.stderr)
        return proc.returncode
    trained = re.search(r"trained (\d+) steps in ([\d.]+) s", proc.stdout)
    metrics_csv = next(iter(sorted(run_dir.rglob("metrics.csv"))), None)
    metrics = final_metrics(metrics_csv) if metrics_csv else {}
    print(f"run directory: {run_dir}")
    print(f"wall time (whole command): {wall:.1f} s; CPU time {cpu:.1f} s")
    if trained:
        print(f"training (train.py's own figure): {trained.group(1)} steps in "
              f"{float(trained.group(2)):.1f} s")
    for key in sorted(metrics):
        print(f"final {key}: {metrics[key]:.4g}")
    if not any(math.isfinite(v) for v in metrics.values()):
        print("no sample metric found in metrics.csv", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
