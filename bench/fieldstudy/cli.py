"""The command line of ``python bench/new_fields.py``: per data set, tune every field, retrain
each best setting with every seed, score, diagnose, then slice the exppower family along β
(:mod:`.sweep`); the report is rewritten after each data set (so a stopped study still leaves a
labelled page of what finished)."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from .parallel import UNIT_ENV
from .presets import FIELDS, PRESETS
from .runs import ROOT, final_run_dir, log, train_final, tune, write_json
from .sweep import SWEEP_FIELD, family_sweep


def parse_args(argv=None):
    import bench.new_fields as entry

    p = argparse.ArgumentParser(prog="bench/new_fields.py", description=entry.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="medium")
    p.add_argument("--full", action="store_true", help="same as --preset full")
    p.add_argument("--smoke", action="store_true", help="same as --preset smoke")
    p.add_argument("--root", help="where runs go (default outputs/new_fields_<preset>)")
    p.add_argument("--out", help="the page (default docs/new_fields.md; <root>/new_fields.md "
                   "for --smoke); figures and <stem>.json beside it")
    p.add_argument("--datasets", type=lambda s: [x for x in s.split(",") if x])
    p.add_argument("--fields", type=lambda s: [x for x in s.split(",") if x])
    p.add_argument("--report-only", action="store_true", help="no training: rewrite the page "
                   "from the finished runs")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="run the (data set, field) units as this many parallel processes, "
                   "one thread each, then write the page (default: this machine's cores, "
                   "%(default)s here; 1: everything in this process)")
    args = p.parse_args(argv)
    if args.full:
        args.preset = "full"
    if args.smoke:
        args.preset = "smoke"
    return args


def prepare(root: Path, preset, dataset: str):
    """``dataset``'s references and data-vs-data floors (cached in ``<root>/floors/``)."""
    from .scores import references

    refs = references(dataset, preset)
    floors_path = root / "floors" / f"{dataset}.json"
    floors = json.loads(floors_path.read_text()) if floors_path.is_file() else None
    if floors is None or floors.get("n_heavy") != refs.n_heavy:
        floors = refs.floors()
        floors_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(floors_path, floors)
    return refs, floors


def study_dataset(root: Path, preset, dataset: str, fields: list[str], report_only: bool
                  ) -> dict:
    """Tune, retrain, score and diagnose every field on ``dataset``; what is missing (with
    ``report_only``) is left out."""
    from .diagnostics import diagnose
    from .scores import score_run

    refs, floors = prepare(root, preset, dataset)
    log(f"{dataset}: data-vs-data floor at n={floors['n']}: "
        + ", ".join(f"{k} {v:.4g}" for k, v in floors.items() if isinstance(v, float)))
    out = {"floors": floors, "fields": {}, "kind": refs.kind, "primary": refs.primary}
    for name in fields:
        spec = FIELDS[name]
        entry = {"new": spec.new}
        sdir = root / "tune" / dataset / name
        if report_only and not (sdir / "optuna.db").is_file():
            continue
        entry["tune"] = tune(root, preset, dataset, spec, refs.val) if not report_only \
            else _tuned(root, preset, dataset, spec, refs)
        if entry["tune"] is None:
            continue
        entry["seeds"] = {}
        for seed in preset.seeds:
            run_dir = final_run_dir(root, dataset, name, seed)
            if report_only and not (run_dir / "scores.json").is_file():
                continue
            if not report_only:
                train_final(root, preset, dataset, spec, entry["tune"]["best_params"], seed)
            entry["seeds"][seed] = score_run(run_dir, refs, preset)
        first = final_run_dir(root, dataset, name, preset.seeds[0])
        if (first / "done.json").is_file() and (not report_only
                                                or (first / "diagnostics.json").is_file()):
            entry["diagnostics"] = diagnose(first, refs.diag_points, preset.diag_n)
        out["fields"][name] = entry
    tuned = out["fields"].get(SWEEP_FIELD, {}).get("tune")
    if preset.beta_sweep and tuned:
        out["sweep"] = family_sweep(root, preset, dataset, refs, tuned["best_params"],
                                    report_only)
    return out


def _tuned(root, preset, dataset, spec, refs):
    """The finished study's result without running trials (``--report-only``)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db = root / "tune" / dataset / spec.name / "optuna.db"
    study = optuna.load_study(study_name=f"{dataset}-{spec.name}", storage=f"sqlite:///{db}")
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return None
    best = min(complete, key=lambda t: t.value)
    return {"best_params": best.params, "best_value": best.value,
            "trials": [{"number": t.number, "value": t.value, "params": t.params}
                       for t in complete]}


def main(argv=None) -> dict:
    import torch

    from .report import write_report

    args = parse_args(argv)
    preset = PRESETS[args.preset]
    torch.set_num_threads(1)
    root = Path(args.root or ROOT / "outputs" / f"new_fields_{preset.name}")
    out = Path(args.out) if args.out else (root / "new_fields.md" if preset.name == "smoke"
                                           else ROOT / "docs" / "new_fields.md")
    datasets = args.datasets or list(preset.datasets)
    fields = args.fields or list(preset.fields)
    unknown = [f for f in fields if f not in FIELDS]
    if unknown:
        raise SystemExit(f"unknown field(s) {unknown}; known: {sorted(FIELDS)}")
    if args.report_only and not (root / "tune").is_dir():
        raise SystemExit(f"--report-only: no study under {root} (no tune/ folder), so there is "
                         f"nothing to report and {out} is left as it is. Pass --root <the "
                         "study's folder> (the medium page's runs: wherever it was run), or run "
                         "the study first.")
    invocations = root / "invocations.json"
    root.mkdir(parents=True, exist_ok=True)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if args.jobs > 1 and not args.report_only:
        from .parallel import run_jobs

        run_jobs(preset, root, datasets, fields, args.jobs,
                 lambda ds: prepare(root, preset, ds))
        args.report_only = True     # the page from everything the units finished
    history = json.loads(invocations.read_text()) if invocations.is_file() else []
    results = {}
    command = "python bench/new_fields.py " + (f"--preset {preset.name}")
    for ds in datasets:
        results[ds] = study_dataset(root, preset, ds, fields, args.report_only)
        # the page after each data set: a stopped study leaves what finished, labelled
        spent = {"cpu_seconds": time.process_time() - cpu0,
                 "wall_seconds": time.perf_counter() - wall0}
        write_report(out, preset, results, [*history, spent], command,
                     pending=[d for d in datasets if d not in results])
    record_invocation(invocations, {"cpu_seconds": time.process_time() - cpu0,
                                    "wall_seconds": time.perf_counter() - wall0,
                                    "report_only": bool(args.report_only), "jobs": args.jobs,
                                    "unit": os.environ.get(UNIT_ENV) == "1",
                                    "datasets": datasets, "fields": fields})
    log(f"done: {out}")
    return results


def record_invocation(path: Path, entry: dict) -> None:
    """Append ``entry`` to the JSON list at ``path`` under an exclusive lock (parallel units
    finish at any time)."""
    import fcntl

    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        history = json.loads(path.read_text()) if path.is_file() else []
        history.append(entry)
        write_json(path, history)
