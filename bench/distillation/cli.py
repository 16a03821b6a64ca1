"""The command line of ``python bench/distill.py``: runs the cases, merges other results files,
writes the report, the figures and the results JSON (and README's table with ``--readme``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from .figures import figures
from .presets import FIELDS, LOW_NFE, ROOT, TEACHER_SOLVERS, TOY
from .report import report, update_readme
from .runs import run_case


def merge(results: dict, part: dict, name: str) -> None:
    """Add the evaluations, stages, metrics, settings and commands of another results file
    (its own entries win only where ``results`` has none: a rerun here is newer)."""
    for k in ("evals", "stages", "metric", "teachers"):
        for key, value in part.get(k, {}).items():
            results.setdefault(k, {}).setdefault(key, value)
    settings = part.get("settings", {})
    if settings and all(isinstance(v, dict) and "teacher_steps" in v for v in settings.values()):
        for key, value in settings.items():
            results["settings"].setdefault(key, value)
    elif settings:  # an older file: settings nested per part
        results["settings"].setdefault(name, settings)
    commands = part.get("commands") or ([part["command"]] if part.get("command") else [])
    for c in commands:
        for one in c.split("; "):
            if one and one not in results["commands"]:
                results["commands"].append(one)


def main(argv=None) -> None:
    import bench.distill as entry

    p = argparse.ArgumentParser(description=entry.__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(TOY))
    p.add_argument("--fields", nargs="+", default=list(FIELDS), choices=list(FIELDS))
    p.add_argument("--methods", nargs="+", default=["reflow", "consistency"])
    p.add_argument("--teacher-steps", type=int, default=1000)
    p.add_argument("--student-steps", type=int, default=500)
    p.add_argument("--pairs", type=int, default=10000)
    p.add_argument("--fid-n", type=int, default=1000)
    p.add_argument("--low-nfe", nargs="+", type=int, default=list(LOW_NFE),
                   help="the low NFEs every model is evaluated at (default 1 2 4)")
    p.add_argument("--teacher-solvers", nargs="+", default=list(TEACHER_SOLVERS),
                   choices=list(TEACHER_SOLVERS),
                   help="the teacher's solvers at low NFE (the best is reported)")
    p.add_argument("--teacher", default=None,
                   help="an existing train.py run dir as the teacher (one data set and field; "
                        "read only)")
    p.add_argument("--merge", nargs="+", default=[],
                   help="results files to merge in (e.g. docs/distillation_results.json)")
    p.add_argument("--out", default=str(ROOT / "outputs" / "bench_distill"))
    p.add_argument("--docs", default=str(ROOT / "docs"))
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--readme", action="store_true",
                   help="also rewrite README.md's distillation table")
    args = p.parse_args(argv)
    if args.teacher and (len(args.datasets) != 1 or len(args.fields) != 1):
        p.error("--teacher is the teacher of one data set and field: pass one --datasets and "
                "one --fields")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    results = (json.loads(res_path.read_text()) if res_path.is_file()
               else {"evals": {}, "stages": {}, "metric": {}})
    for k in ("settings", "teachers"):
        results.setdefault(k, {})
    results.setdefault("commands", [results.pop("command")] if results.get("command") else [])
    # merge --merge files, and on --report-only runs written with --out <out>/<anything>
    others = [Path(f) for f in args.merge]
    if args.report_only:
        others += sorted(out.glob("*/results.json"))
    for other in others:
        if not other.is_file():
            raise SystemExit(f"--merge {other}: no such file")
        merge(results, json.loads(other.read_text()), other.parent.name)

    def save():
        tmp = res_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        os.replace(tmp, res_path)

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    if not args.report_only:
        command = "python bench/distill.py " + " ".join(argv or sys.argv[1:])
        if command not in results["commands"]:
            results["commands"].append(command)
        for d in args.datasets:
            for f in args.fields:
                results["settings"][f"{d}/{f}"] = {
                    "teacher_steps": None if args.teacher else args.teacher_steps,
                    "teacher": args.teacher, "student_steps": args.student_steps,
                    "pairs": args.pairs, "methods": args.methods, "low_nfe": args.low_nfe,
                    "fid_n": args.fid_n if d not in TOY else None}
        save()
        for dataset in args.datasets:
            for fname in args.fields:
                log(f"== {dataset} / {fname}")
                run_case(dataset, fname, args, results, save, log)
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    paths = figures(results, out, docs)
    report(results, args, docs / "distillation.md", paths)
    keep = docs / "distillation_results.json"
    keep.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    log(f"wrote {docs / 'distillation.md'}")
    if args.readme:
        update_readme(results["evals"], results["metric"], ROOT / "README.md")
        log("updated README.md's distillation table")
