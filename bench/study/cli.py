"""The command line: ``python bench/case_study.py [options] [train.py overrides]``.

Plans the runs, refuses run directories it may not reuse before anything starts, trains and
scores the runs (``--jobs`` worker processes share them, each run handed to exactly one),
measures the framework overhead once everything is done, and writes the report.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import traceback
from pathlib import Path

from .plan import Run, Study, dataset_overrides, load_study, plan
from .util import ROOT, STUDY_CONFIG, log


def parse_args(argv=None):
    def ints(s):
        return [int(x) for x in s.split(",") if x]

    def floats(s):
        return [] if s == "none" else [float(x) for x in s.split(",") if x]

    def names(s):
        return [x for x in s.split(",") if x]

    from . import __doc__ as doc

    p = argparse.ArgumentParser(prog="bench/case_study.py", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="train.py overrides for every run, e.g. "
                   "dataset=cifar10 network=ddpmpp trainer=ddp (a dataset=/experiment= "
                   "replaces the study's data sets)")
    p.add_argument("--config", default=str(STUDY_CONFIG))
    p.add_argument("--smoke", action="store_true", help="the small preset (smoke: section)")
    p.add_argument("--out", default=None,
                   help="the report (figures and <stem>.json beside it); default: the "
                   "project's docs/results.md for the configured study, <root>/results.md "
                   "for --smoke or a data set given on the command line")
    p.add_argument("--root", default=None, help="where the runs go (default: "
                   "outputs/case_study; outputs/case_study_smoke with --smoke, "
                   "outputs/case_study_<data set> for a data set given on the command line)")
    p.add_argument("--fields", type=names)
    p.add_argument("--datasets", type=names)
    p.add_argument("--seeds", type=ints)
    p.add_argument("--steps", type=int, help="training budget (trainer.max_steps) of every run")
    p.add_argument("--nfe", type=ints)
    p.add_argument("--solvers", type=names)
    p.add_argument("--n", type=int, help="samples scored per setting")
    p.add_argument("--no-adaptive", action="store_true")
    p.add_argument("--no-likelihood", action="store_true")
    p.add_argument("--likelihood-n", type=int)
    p.add_argument("--probe-euler", type=lambda s: [] if s == "none" else ints(s),
                   help="Euler step counts of the step-size probe (none: off)")
    p.add_argument("--probe-noise", type=floats, help="relative noise levels (none: off)")
    p.add_argument("--device", default="auto", help="evaluation device: auto | cpu | cuda")
    p.add_argument("--report-only", action="store_true", help="no training or scoring")
    p.add_argument("--figures-from", metavar="RESULTS_JSON",
                   help="only redraw the figures beside a saved <stem>.json from its numbers "
                   "(per-field sample figures only where its run directories still exist)")
    p.add_argument("--dry-run", action="store_true", help="print the training commands only")
    p.add_argument("--jobs", type=int, help="worker processes sharing the runs (default: the "
                   "config's `jobs`); each gets OMP_NUM_THREADS = cores // jobs")
    return p.parse_args(argv)


def process_run(job: tuple[Study, Run, str]) -> str:
    """One run, in a worker: train (or reuse) it, then score it; returns its status."""
    from .score import evaluate
    from .train import train

    study, run, device = job
    train(run)
    if run.status == "trained":
        evaluate(study, run, device)
    return run.status


def run_failed(job: tuple[Study, Run, str], exc: BaseException) -> str:
    _, run, _ = job
    log(f"[error] {run.dataset}/{run.field}/seed{run.seed}: "
        + "".join(traceback.format_exception(exc)).rstrip())
    return "error"


def figures_only(path: Path) -> int:
    """Redraws the figures of a saved report from its ``<stem>.json``."""
    from .plots import plots

    raw = json.loads(path.read_text())
    study = Study(raw["config"], path.parent, path.with_suffix(".md"),
                  raw.get("passthrough", []))
    study.runs = [Run(d, f, int(s), [], Path(e["run_dir"]))
                  for d, fields in raw["results"].items() for f, seeds in fields.items()
                  for s, e in seeds.items()]
    plots(study, raw["results"], study.out)
    log(f"redrew the figures of {path} beside it")
    return 0


def main(argv=None) -> int:
    import torch

    from .overhead import measure_overhead
    from .pool import run_each, worker_threads
    from .report import code_version, record_invocation, report
    from .results import collect
    from .train import check_reusable, read_marker, train

    args = parse_args(argv)
    if args.figures_from:
        return figures_only(Path(args.figures_from))
    wall_start = time.perf_counter()
    bad = [o for o in args.overrides if "=" not in o and not o.startswith("~")]
    if bad:
        raise SystemExit(f"overrides must be key=value (or ~key), got {bad}")
    cfg = load_study(args)
    custom = args.smoke or bool(dataset_overrides(args.overrides))
    name = ("case_study_smoke" if args.smoke else
            f"case_study_{next(iter(cfg['datasets']))}" if custom else "case_study")
    root = Path(args.root or ROOT / "outputs" / name).resolve()
    out = args.out or (root / "results.md" if custom else ROOT / "docs" / "results.md")
    study = Study(cfg, root, Path(out).resolve(), list(args.overrides), code=code_version())
    plan(study)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else args.device
    log(f"case study: {len(study.runs)} training runs ({len(cfg['fields'])} fields × "
        f"{len(cfg['datasets'])} data set(s) × seeds) under {root}; report {study.out}")
    if not args.report_only:
        for run in study.runs:  # refuse before anything is trained or any worker starts
            check_reusable(run)
    if args.dry_run:
        for run in study.runs:
            train(run, dry_run=True)
        return 0
    statuses = []
    if not args.report_only:
        jobs = min(int(args.jobs if args.jobs is not None else cfg.get("jobs") or 1),
                   len(study.runs))
        if jobs > 1:
            study.workers = (f"{jobs} worker processes sharing the runs, OMP_NUM_THREADS="
                             f"{worker_threads(jobs)} each")
            log(f"case study: {study.workers}")
        statuses = run_each(process_run, [(study, run, device) for run in study.runs], jobs,
                            on_error=run_failed)
    for run in study.runs:  # what the workers (or earlier invocations) left on disk
        read_marker(run)
    ok = all(s == "trained" for s in statuses)
    if not args.report_only and ok:
        measure_overhead(study)  # every run is done: nothing else competes for the cores
    results = collect(study)
    wall = time.perf_counter() - wall_start
    command = ("python bench/case_study.py " + shlex.join(sys.argv[1:] if argv is None
                                                          else argv)).strip()
    invocations = record_invocation(study, command, wall, record=not args.report_only)
    lines = report(study, results, wall, command, invocations,
                   computed=not args.report_only)
    log("")
    for line in lines:
        log(line.replace("**", ""))
    log(f"wrote {study.out} (and figures, {study.out.stem}.json) in {wall:.0f} s")
    return 0 if ok and all(r.status == "trained" for r in study.runs) else 1
