"""The framework overhead (bench/overhead.py's measurement), measured by the study's own process
once every run has finished, and its report section."""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import torch

from .plan import Study
from .util import ROOT, log, write_json


@functools.cache
def overhead_bench():
    """bench/overhead.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("case_study_overhead",
                                                  ROOT / "bench" / "overhead.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def overhead_file(study: Study) -> Path | None:
    ov = study.cfg.get("overhead")
    if not ov:
        return None
    key = "-".join(f"{k}{'+'.join(map(str, v)) if isinstance(v, list) else v}"
                   for k, v in sorted(ov.items()))
    return study.root / f"overhead-{key}.json"


def measure_overhead(study: Study) -> None:
    """Times our LightningModule against a bare loop (bench/overhead.py's ``measure``) in this
    process, after every run has finished, so nothing else competes for the cores; cached."""
    path = overhead_file(study)
    if path is None or path.is_file():
        return
    ov, bench = study.cfg["overhead"], overhead_bench()
    log(f"[overhead] {', '.join(ov['setups'])}: {ov['rounds']} round(s) of {ov['steps']} "
        f"steps, {torch.get_num_threads()} torch thread(s)")
    rows = [bench.measure(name, bench.SETUPS[name], int(ov["steps"]), int(ov["warmup"]),
                          int(ov["rounds"]), int(ov["samples"])) for name in ov["setups"]]
    write_json(path, {"settings": ov, "threads": torch.get_num_threads(), "rows": rows})
    for line in bench.table(rows):
        log(line)


def overhead_section(study: Study) -> list[str]:
    """The report's "Framework overhead" section (markdown lines)."""
    path = overhead_file(study)
    if path is None:
        return []
    lines = ["## Framework overhead", ""]
    if not path.is_file():
        return lines + ["Not measured (run without --report-only).", ""]
    data, bench = json.loads(path.read_text()), overhead_bench()
    ov = data["settings"]
    lines += [f"`bench/overhead.py`'s measurement, made by this command after every run had "
              f"finished (CPU time, {data['threads']} torch thread(s)): a training step of our "
              "LightningModule (a real `Trainer`, no logger, checkpoints or callbacks) against "
              "a hand-written loop with the same network, objective, optimiser, clipping and "
              "pre-loaded batches, and a `GenerativeODE.sample` call against a bare Heun loop "
              f"on the same prior states; medians of {ov['rounds']} rounds of "
              f"{int(ov['steps']) - int(ov['warmup'])} timed steps (the side that goes first "
              "alternates). Ratio = ours / bare; targets ≤ "
              f"{bench.TRAIN_TARGET} (training step) and ≤ {bench.SAMPLE_TARGET} (sampling).", ""]
    lines += bench.table(data["rows"]) + [""]
    for r in data["rows"]:
        for what, target, ratio, rounds in (
                ("training step", bench.TRAIN_TARGET, r["train_ours_ms"] / r["train_bare_ms"],
                 r["train_ratios"]),
                ("sampling", bench.SAMPLE_TARGET, r["sample_ours_s"] / r["sample_bare_s"],
                 r["sample_ratios"])):
            if ratio <= target:
                verdict = "meets the target"
            elif min(rounds) <= target:
                verdict = (f"misses the target in the median, but the rounds' paired ratios "
                           f"({bench.spread(rounds)}) reach below it: within this machine's "
                           "timing noise")
            else:
                verdict = (f"misses the target in every round ({bench.spread(rounds)}): a "
                           "measured overhead")
            lines.append(f"- {r['setup']}, {what}: {ratio:.3f} {verdict}.")
    return lines + [""]
