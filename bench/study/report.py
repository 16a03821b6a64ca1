"""The report: a markdown page (tables and findings) and ``<stem>.json`` beside it with every
number; the figures come from :mod:`.plots`."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from .overhead import overhead_section
from .plan import Study, adaptive_of, budgets, grid_key
from .plots import figure_names, plots
from .probes import euler_key, noise_key, probed
from .results import best_cell, finding_lines, findings, overall_best, primary_of, values
from .train import TRAIN_LOG
from .util import ROOT, fmt, fmt_ms, write_json


def code_version() -> str:
    """``git describe``-like id of the library code the scores come from (``+dirty`` when
    unified_ode/ has uncommitted changes); cached scores keep the id they were made with."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--", "unified_ode") else "")


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    text = (f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} with "
            f"{torch.get_num_threads()} thread(s) (OMP_NUM_THREADS="
            f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), Python "
            f"{platform.python_version()}, {platform.system()}")
    if torch.cuda.is_available():
        text += f"; GPU: {torch.cuda.get_device_name(0)} × {torch.cuda.device_count()}"
    return text


def record_invocation(study: Study, command: str, wall: float, record: bool) -> list[dict]:
    """Appends this invocation to ``<root>/invocations.json`` (when ``record``: not for
    --report-only, which computes nothing); returns all of them."""
    path = study.root / "invocations.json"
    past = json.loads(path.read_text()) if path.is_file() else []
    if record:
        past.append({"command": command, "wall_seconds": round(wall, 1),
                     "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z")})
        write_json(path, past)
    return past


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def cell_text(got, with_nfe: bool = True) -> str:
    if got is None:
        return "—"
    if got[0] == "n/a":
        return "n/a"
    vals, nfes = got
    text = fmt_ms(vals)
    return f"{text} ({np.mean(nfes):g})" if with_nfe else text


def main_table(study: Study, ds_name: str, ds_results: dict) -> list[str]:
    """Field × NFE budget: the best solver's metric (mean ± std), adaptive, bits/dim, time."""
    ds, nfes = study.cfg["datasets"][ds_name], budgets(study, ds_name)
    adaptive, has_bpd = adaptive_of(study, ds_name), bool(ds.get("likelihood"))
    header = ["field", *[f"NFE ≤ {n}" for n in nfes]] + (["adaptive"] if adaptive else []) \
        + (["bits/dim"] if has_bpd else []) + ["train s"]
    rows = []
    for f_name, seeds in ds_results.items():
        row = [f_name]
        for budget in [*nfes, *([None] if adaptive else [])]:
            bc = best_cell(study, ds_name, seeds, budget)
            if bc is None:
                row.append("—")
                continue
            spread = f" ± {fmt(bc.std, 2)}" if bc.std is not None else ""
            where = f"{bc.solver} {bc.nfe:g}" if budget else f"NFE {bc.nfe:g}"
            row.append(f"{fmt(bc.mean)}{spread} ({where})")
        if has_bpd:
            bpds = [e["bpd"] for e in seeds.values() if e["bpd"] is not None]
            row.append(fmt_ms(bpds) if bpds else "—")
        secs = [e["train_seconds"] for e in seeds.values() if e["train_seconds"]]
        row.append(f"{np.mean(secs):.0f}" if secs else "—")
        rows.append(row)
    return table(header, rows)


def probe_tables(study: Study, ds_results: dict, primary: str) -> list[str]:
    pr, lines = study.cfg["probes"], []
    if pr.get("euler_steps"):
        rows = [[f, *[cell_text(values(seeds, euler_key(k)), with_nfe=False)
                      for k in pr["euler_steps"]]] for f, seeds in ds_results.items()]
        lines += ["### Probe: Euler step count", "",
                  f"{primary} with Euler at each step count (NFE = steps).", ""]
        lines += table(["field", *[f"{int(k)} steps" for k in pr["euler_steps"]]], rows) + [""]
    noise = pr.get("noise") or {}
    if noise.get("eps"):
        rows = [[f, *[cell_text(values(seeds, noise_key(study, float(e))), with_nfe=False)
                      for e in noise["eps"]]] for f, seeds in ds_results.items()]
        lines += ["### Probe: noise on the network's prediction", "",
                  f"{primary} with {noise['solver']} at NFE ≤ {noise['nfe']} when every "
                  "prediction p is replaced by p + ε·rms(p)·z, z ~ N(0, I), rms over each "
                  "sample's coordinates (the denoiser for denoiser-objective fields, the "
                  "velocity for velocity-objective ones).", ""]
        lines += table(["field", *[f"ε = {float(e):g}" for e in noise["eps"]]], rows) + [""]
    return lines


def dataset_section(study: Study, ds_name: str, ds_results: dict, stem: str) -> list[str]:
    cfg, ds = study.cfg, study.cfg["datasets"][ds_name]
    nfes = budgets(study, ds_name)
    primary, kind = primary_of(ds_results)
    names = figure_names(ds_name, kind)
    trained = [e.get("budget") for seeds in ds_results.values() for e in seeds.values()
               if e.get("budget")]
    b = trained[0] if trained else None
    lines = [f"## {ds_name}", "",
             f"Training overrides: `{' '.join(ds['overrides'] + study.passthrough)}`; "
             + (f"budget {b['steps']} steps × batch {b['batch_size']}, network "
                f"{b['network']}" if b else "budget: see the runs")
             + f"; seeds {list(ds['seeds'])}; metric `{primary}` on {ds['n']} samples "
             f"({'held-out data' if kind == 'points' else 'Inception features'}), "
             "lower is better."]
    failed = [f"{f}/seed{s}" for f, seeds in ds_results.items() for s, e in seeds.items()
              if e["status"] != "trained"]
    if failed:
        lines.append(f"Training failed or not run: {', '.join(failed)} (see their "
                     f"{TRAIN_LOG}).")
    lines.append("")
    if primary is None:
        return lines + ["No scores yet.", ""]
    adaptive = adaptive_of(study, ds_name)
    lines += [f"### {primary} of the best solver at each NFE budget", "",
              f"Mean ± std over {len(ds['seeds'])} seed(s); in brackets the solver and its "
              "measured NFE (adaptive: "
              + (f"{adaptive['solver']} {' '.join(adaptive['overrides'])}"
                 if adaptive else "off") + ")."
              + (" Bits/dim: `sample.py task=likelihood` on "
                 f"{cfg['likelihood']['n']} held-out points "
                 f"({cfg['likelihood'].get('divergence', 'auto')} divergence)."
                 if ds.get("likelihood") else ""), ""]
    lines += main_table(study, ds_name, ds_results) + [""]
    lines += [f"![{primary} vs NFE, one panel per solver]({stem}_{names['nfe']})", ""]
    lines += ["### Every solver", "", f"{primary}, mean ± std over seeds (measured NFE); "
              "n/a: the solver needs an affine field.", ""]
    for solver in ds["solvers"]:
        rows = [[f_name, *[cell_text(values(seeds, grid_key(solver, n))) for n in nfes]]
                for f_name, seeds in ds_results.items()]
        lines += [f"**{solver}**", ""] + table(["field", *[f"NFE ≤ {n}" for n in nfes]],
                                               rows) + [""]
    others = sorted({m for seeds in ds_results.values() for e in seeds.values()
                     for r in e["cells"].values() for m in r.get("metrics", {})
                     if "@" in m and not m.startswith("prior/")},
                    key=lambda m: (m != primary, m))
    rows = []
    for f_name, seeds in ds_results.items():
        top = overall_best(study, ds_name, seeds)
        if top:
            rows.append([f_name, f"{top.solver} NFE {top.nfe:g}",
                         *[cell_text(values(seeds, top.key, m), with_nfe=False)
                           for m in others]])
    lines += ["### All metrics at each field's best setting", ""]
    lines += table(["field", "setting", *others], rows) + [""]
    if probed(study, ds_name):
        lines += probe_tables(study, ds_results, primary)
        lines += [f"![probes]({stem}_{names['probes']})", ""]
    f, what = cfg["figures"], ("samples" if kind == "images" else "trajectories")
    lines += [f"![{what} per field]({stem}_{names['fields']})", "",
              f"*{what.capitalize()} of each field (seed {ds['seeds'][0]}, {f['solver']} at "
              f"NFE ≤ {f['nfe']}" + (", over held-out data (grey)" if kind == "points" else "")
              + ").*", ""]
    return lines


def header_lines(study: Study, results: dict, wall: float, command: str,
                 invocations: list[dict], computed: bool) -> list[str]:
    cfg = study.cfg
    train_s = sum(r.train_seconds or 0 for r in study.runs)
    eval_s = sum(rec.get("seconds", 0) for ds in results.values() for seeds in ds.values()
                 for e in seeds.values() for rec in e["cells"].values())
    bpd_s = sum((e["bpd_info"] or {}).get("wall_seconds", 0) for ds in results.values()
                for seeds in ds.values() for e in seeds.values())
    codes = sorted({rec.get("code", "unknown") for ds in results.values()
                    for seeds in ds.values() for e in seeds.values()
                    for rec in e["cells"].values()})
    return [
        "# Case study: every field on equal terms", "",
        f"Generated by `{command}` (bench/case_study.py, settings in conf/case_study.yaml). "
        "Every field is trained with the same network and budget per data set, then each "
        "trained model (EMA weights) is sampled from fixed prior noise with every solver at "
        f"each NFE budget ({', '.join(f'{d}: {budgets(study, d)}' for d in cfg['datasets'])})"
        " and scored as `sample.py task=evaluate` does.", "",
        "- Fields: " + ", ".join(f"`{k}` ({' '.join(v)})" for k, v in cfg["fields"].items()),
        f"- Hardware: {hardware()}; {study.workers}",
        (f"- Wall time of this invocation: {wall:.0f} s ({wall / 3600:.2f} h); of the "
         if computed else
         f"- Report regenerated from saved scores (--report-only) in {wall:.0f} s; wall time "
         "of the ")
        + f"{len(invocations)} finished invocation(s) that trained or measured on this root: "
        f"{sum(i['wall_seconds'] for i in invocations):.0f} s (`invocations.json`). "
        f"Recorded compute: training {train_s:.0f} s, scoring {eval_s:.0f} s, bits/dim "
        f"{bpd_s:.0f} s (runs reused from earlier invocations count in the recorded "
        "compute; with several workers it exceeds the wall time).",
        f"- Runs: {study.root / 'runs'}; scores made with library code {', '.join(codes)} "
        "(cached scores are reused: use a new --root after changing solvers or metrics)", ""]


def report(study: Study, results: dict, wall: float, command: str,
           invocations: list[dict], computed: bool = True) -> list[str]:
    """Writes ``study.out`` (markdown), its figures and ``<stem>.json``; returns the
    findings' lines."""
    out = study.out
    out.parent.mkdir(parents=True, exist_ok=True)
    plots(study, results, out)
    found = findings(study, results)
    lines_found = finding_lines(found)
    stem = out.with_suffix("").name
    md = header_lines(study, results, wall, command, invocations, computed)
    md += ["## Findings (computed from the tables below)", ""]
    md += [f"- {line}" for line in lines_found] or ["- no scores"]
    md += ["", f"![quality vs NFE of every field, one panel per data set]({stem}_overview.png)",
           "",
           f"![quality vs NFE of each solver]({stem}_solvers.png)", ""]
    for ds_name, ds_results in results.items():
        md += dataset_section(study, ds_name, ds_results, stem)
    md += overhead_section(study)
    out.write_text("\n".join(md) + "\n")
    raw = {"command": command, "wall_seconds": wall, "hardware": hardware(),
           "config": study.cfg, "passthrough": study.passthrough, "findings": found,
           "results": {d: {f: {str(s): e for s, e in seeds.items()} for f, seeds in r.items()}
                       for d, r in results.items()}}
    write_json(out.with_name(out.stem + ".json"), raw)
    return lines_found
