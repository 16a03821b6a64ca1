"""Start-up costs of the command line: ``--help``, ``--cfg job`` and the imports behind them.

    python bench/cli.py              # 5 repeats of each command
    python bench/cli.py --repeats 9

Each command runs in a fresh interpreter (``python -c`` or the entry point), ``--repeats``
times; the table shows the median wall time and the median CPU time (user + system of the
child). Targets (issue 15): ``--help`` and ``--cfg job`` within 3 s, ``import
unified_ode.app.train`` within 3 CPU-s. A benchmark, not a test: the figures depend on the
machine and its load (give the command, measure on an idle machine).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
COMMANDS = {
    "train.py --help": [PY, "train.py", "--help"],
    "train.py --cfg job": [PY, "train.py", "--cfg", "job"],
    "sample.py --help": [PY, "sample.py", "--help"],
    "train.py -sc query=bash (tab completion)": [PY, "train.py", "-sc", "query=bash"],
    "import unified_ode": [PY, "-c", "import unified_ode"],
    "import unified_ode.app.train": [PY, "-c", "import unified_ode.app.train"],
    "import torch (for scale)": [PY, "-c", "import torch"],
}
TARGETS = {"train.py --help": ("wall", 3.0), "train.py --cfg job": ("wall", 3.0),
           "sample.py --help": ("wall", 3.0), "import unified_ode.app.train": ("cpu", 3.0)}


def measure(cmd: list[str], env: dict) -> tuple[float, float]:
    """``(wall seconds, CPU seconds)`` of one run of ``cmd`` in a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    env = {**os.environ, "COMP_LINE": "python train.py phys"}
    print(f"| command | wall s (median of {args.repeats}) | CPU s | target |")
    print("|---|---|---|---|")
    for name, cmd in COMMANDS.items():
        runs = [measure(cmd, env) for _ in range(args.repeats)]
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        target = ""
        if name in TARGETS:
            kind, limit = TARGETS[name]
            value = wall if kind == "wall" else cpu
            target = f"≤ {limit:g} {kind} s: {'ok' if value <= limit else 'MISSED'}"
        print(f"| `{name}` | {wall:.2f} | {cpu:.2f} | {target} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
