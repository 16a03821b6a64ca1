"""The README's default run, timed and scored: ``python train.py`` as a new user types it.

    python bench/default_run.py                          # the default run, into a new directory
    python bench/default_run.py trainer.max_steps=2000   # any train.py overrides

Runs ``train.py`` in a fresh process (the environment as given: no ``OMP_NUM_THREADS``
is set here, the app sets its own threads from ``threads=``), then prints

* the wall time of the whole command (start-up, training, final scoring and figures),
* the training time that ``train.py`` itself reports (``trained N steps in X s``),
* the CPU time of the process (user + system, all threads),
* the final sample metrics of ``logs/metrics.csv`` (sliced Wasserstein ``sw``, ``mmd``) and
  the prior samples' own sliced Wasserstein (the baseline to beat),
* the final checkpoint re-scored with ``--seeds`` other sampling seeds (through the Python
  API, ``run.sample``): median and range of the sliced Wasserstein against 2000 held-out
  points. PFGM's heavy-tailed prior sends a few starting points so far out that they never
  come back, and one such point sets the whole distance (sw ≈ 1 instead of ≈ 0.08), so the
  single-seed figure of the metrics callback is a draw from a wide, heavy-tailed spread
  (measured over 30 seeds of one default-run checkpoint, 2026-12-02: median 0.109, 20 of 30
  below 0.2, max 1.52; the previous default, 3000 steps of batch 512: median 0.136, 19 of 30,
  max 1.51); the median is the figure to compare.

A benchmark, not a test: the figures depend on the machine and its load. The README's
"Two commands" section quotes them from an idle machine.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import resource
import statistics
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
    p.add_argument("--seeds", type=int, default=10,
                   help="re-score the final checkpoint with this many sampling seeds (0: skip)")
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
    if args.seeds > 0:
        sws = rescore(run_dir, args.seeds)
        print(f"sw@2k over sampling seeds 0..{args.seeds - 1}: median "
              f"{statistics.median(sws):.4g}, range {min(sws):.4g} to {max(sws):.4g} "
              f"({', '.join(f'{v:.3g}' for v in sws)})")
    return 0


def rescore(run_dir: Path, seeds: int, n: int = 2000) -> list[float]:
    """Sliced Wasserstein of ``n`` samples of the run's final (EMA) weights against ``n``
    held-out points, for sampling seeds ``0 .. seeds-1``."""
    sys.path.insert(0, str(ROOT))
    import unified_ode
    from unified_ode.metrics.points import sliced_wasserstein

    run = unified_ode.load_run(run_dir)
    reference = run.heldout(n)
    return [sliced_wasserstein(run.sample(n, seed=seed, progress=False).x, reference)
            for seed in range(seeds)]


if __name__ == "__main__":
    sys.exit(main())
