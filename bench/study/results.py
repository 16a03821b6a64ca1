"""The results: every run's cached scores gathered into one nested dict, and the rankings read
from it (best solver per NFE budget, the findings).

``results[dataset][field][seed] = {status, train_seconds, cells: {key: record}, bpd,
bpd_info, run_dir, budget}``, the shape saved in the report's ``results.json``. Lower is
better for every ranking metric (sw, mmd, fid, kid).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
from omegaconf import OmegaConf

from .plan import Study, budgets, cache_dir, grid_key, likelihood_key
from .score import cells_for
from .util import fmt, mean_std

FEW_NFE = 10  # "few NFE" in the findings: budgets up to this


def collect(study: Study) -> dict:
    """Reads every run's cached scores, bits/dim and training budget."""
    results: dict = {}
    for run in study.runs:
        entry = {"status": run.status, "train_seconds": run.train_seconds, "cells": {},
                 "bpd": None, "bpd_info": None, "run_dir": str(run.run_dir)}
        cdir = cache_dir(study, run)
        if run.status == "trained":
            for cell in cells_for(study, run):
                path = cdir / f"{cell.key}.json"
                if path.is_file():
                    entry["cells"][cell.key] = json.loads(path.read_text())
            lk = cdir / likelihood_key(study) / "likelihood.json"
            if lk.is_file():
                info = json.loads(lk.read_text())
                entry["bpd"] = info["bits_per_dim"]
                entry["bpd_info"] = {k: info[k] for k in ("n", "divergence", "convention",
                                                          "wall_seconds")}
            resolved = run.run_dir / "config_resolved.yaml"
            if resolved.is_file():
                rc = OmegaConf.load(resolved)
                entry["budget"] = {"steps": int(rc.trainer.max_steps),
                                   "batch_size": int(rc.dataset.batch_size),
                                   "network": str(rc.network._target_).rsplit(".", 1)[-1]}
        results.setdefault(run.dataset, {}).setdefault(run.field, {})[run.seed] = entry
    return results


def values(seeds: dict, key: str, metric: str | None = None):
    """``(values, nfes)`` of cell ``key`` over the seeds that have it; None when none do;
    ``("n/a", reason)`` when the cell does not apply. ``metric`` defaults to the primary."""
    vals, nfes = [], []
    for entry in seeds.values():
        rec = entry["cells"].get(key)
        if rec is None:
            continue
        if "na" in rec:
            return "n/a", rec["na"]
        vals.append(rec["metrics"][metric or rec["primary"]])
        nfes.append(rec["nfe"])
    return (vals, nfes) if vals else None


def summary(seeds: dict, key: str) -> tuple[float, float | None, float] | None:
    """``(mean, std, mean NFE)`` of cell ``key``'s primary metric, None when absent, n/a or
    not finite."""
    got = values(seeds, key)
    if not got or got[0] == "n/a":
        return None
    m, s = mean_std(got[0])
    return (m, s, float(np.mean(got[1]))) if math.isfinite(m) else None


def primary_of(ds_results: dict) -> tuple[str | None, str | None]:
    """The data set's ranking metric and kind ("points" | "images"), from any score."""
    for seeds in ds_results.values():
        for entry in seeds.values():
            for rec in entry["cells"].values():
                return rec["primary"], rec["kind"]
    return None, None


def cell_keys(seeds: dict) -> list[str]:
    return sorted({k for e in seeds.values() for k in e["cells"]})


@dataclass
class Best:
    key: str
    mean: float
    std: float | None
    nfe: float
    solver: str


def best_cell(study: Study, ds_name: str, seeds: dict, budget: int | None) -> Best | None:
    """The solver with the lowest mean metric at NFE budget ``budget`` (None: adaptive)."""
    if budget is None:
        keys = [k for k in cell_keys(seeds) if k.startswith("adaptive-")]
    else:
        keys = [grid_key(s, budget) for s in study.cfg["datasets"][ds_name]["solvers"]]
    best = None
    for key in keys:
        got = summary(seeds, key)
        if got and (best is None or got[0] < best.mean):
            solver = key.split("-")[1] if budget is None else key.split("-")[0]
            best = Best(key, got[0], got[1], got[2], solver)
    return best


def overall_best(study: Study, ds_name: str, seeds: dict) -> Best | None:
    """The field's best setting: any solver at any budget, or the adaptive solver."""
    cands = [c for c in (best_cell(study, ds_name, seeds, b)
                         for b in [*budgets(study, ds_name), None]) if c]
    return min(cands, key=lambda c: c.mean) if cands else None


def findings(study: Study, results: dict) -> dict:
    """Per data set: the fields ranked at NFE ≤ FEW_NFE and by their best quality overall."""
    out = {}
    for ds_name, ds_results in results.items():
        primary, _ = primary_of(ds_results)
        if primary is None:
            continue
        few, overall = {}, {}
        for f_name, seeds in ds_results.items():
            cands = [c for c in (best_cell(study, ds_name, seeds, b)
                                 for b in budgets(study, ds_name) if b <= FEW_NFE) if c]
            if cands:
                few[f_name] = min(cands, key=lambda c: c.mean)
            top = overall_best(study, ds_name, seeds)
            if top:
                overall[f_name] = top
        item = {"metric": primary}
        for name, table in (("few_nfe", few), ("best_quality", overall)):
            if table:
                ranked = sorted(table.items(), key=lambda kv: kv[1].mean)
                item[name] = [{"field": f, "mean": b.mean, "std": b.std, "nfe": b.nfe,
                               "solver": b.solver} for f, b in ranked]
        out[ds_name] = item
    return out


def finding_lines(found: dict) -> list[str]:
    """The findings as sentences (markdown, bold winners)."""
    lines, wins_few, wins_best = [], {}, {}
    for ds_name, item in found.items():
        for name, label in (("few_nfe", f"best at NFE ≤ {FEW_NFE}"),
                            ("best_quality", "best quality (any solver, any NFE)")):
            ranked = item.get(name)
            if not ranked:
                continue
            top = ranked[0]
            text = (f"{ds_name}: {label}: **{top['field']}**, {item['metric']} "
                    f"{fmt(top['mean'])}" + (f" ± {fmt(top['std'], 2)}" if top["std"] else "")
                    + f" ({top['solver']}, NFE {top['nfe']:g})")
            if len(ranked) > 1:
                r = ranked[1]
                text += (f"; runner-up {r['field']} {fmt(r['mean'])}"
                         + (f" ± {fmt(r['std'], 2)}" if r["std"] else ""))
                if top["std"] and r["std"] and r["mean"] - top["mean"] < top["std"] + r["std"]:
                    text += " (within the seed spread)"
            lines.append(text)
            wins = wins_few if name == "few_nfe" else wins_best
            wins[top["field"]] = wins.get(top["field"], 0) + 1
    n = len(found)
    for wins, label in ((wins_few, f"fastest at few NFE (≤ {FEW_NFE})"),
                        (wins_best, "best quality")):
        if wins:
            order = sorted(wins.items(), key=lambda kv: -kv[1])
            lines.append(f"Overall, {label}: **{order[0][0]}** (best on {order[0][1]} of {n} "
                         "data set(s)" + (", then " + ", ".join(f"{f} ({k})" for f, k in
                                                              order[1:]) if order[1:] else "")
                         + ")")
    return lines
