"""The page ``docs/new_fields.md``: protocol, tables (mean ± std over seeds, with floors),
diagnostic figures, and the verdict on issue 17's target, computed from the numbers; then the
hand-written interpretation kept beside the page (``<page stem>_why.md``), when there is one."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .presets import BASELINES, Preset
from .runs import hparams_search_sweeper, short_params
from .stats import beats, fmt, mean_std
from .sweep import slice_section

LOWER = {"bits": True, "sw": True, "mmd": True, "fid": True, "kid": True, "precision": False,
         "recall": False}
#: the table's sample-metric columns per kind of data: (metric, significant digits)
COLUMNS = {"points": (("sw", 3), ("mmd", 2)), "images": (("fid", 3), ("kid", 2))}


def primary(res: dict) -> str:
    """The sample metric of a data set's verdict (``sw`` on points, ``fid`` on images)."""
    return res.get("primary", "sw")


def seed_values(entry: dict, cell: str | None, metric: str) -> list[float]:
    """One value per scored seed: bits/dim (``cell`` None) or a cell's metric."""
    out = []
    for s in entry.get("seeds", {}).values():
        v = s["bits"]["mean"] if cell is None else s["cells"][cell][metric]
        out.append(float(v))
    return out


def verdict(results: dict, preset: Preset) -> dict:
    """Per data set and metric, which new fields beat both baselines by more than the seed
    spread; the target is met when one field does so on ≥ 2 data sets (on bits/dim, or on
    the data set's primary sample metric — sw on points, FID on images — at NFE ≤ 10)."""
    table = {}
    for ds, res in results.items():
        fields = res["fields"]
        if not all(b in fields for b in BASELINES):
            continue
        metrics = [("bits", None, "bits")] + [(f"sample {c[0]}", c[0], primary(res))
                                              for c in preset.cells]
        for label, cell, metric in metrics:
            winners = []
            for name, entry in fields.items():
                if not entry["new"] or not entry.get("seeds"):
                    continue
                new = seed_values(entry, cell, metric)
                if all(beats(new, seed_values(fields[b], cell, metric), LOWER[metric])
                       for b in BASELINES):
                    winners.append(name)
            table.setdefault(label, {})[ds] = winners
    met = {}
    for label in ("bits", f"sample {preset.cells[0][0]}"):
        counts = {}
        for winners in table.get(label, {}).values():
            for w in winners:
                counts[w] = counts.get(w, 0) + 1
        met[label] = sorted(w for w, c in counts.items() if c >= 2)
    return {"table": table, "met": met}


def crossing(sigma: list[float], values: list[float], level: float = 0.5) -> float | None:
    """The σ (log-interpolated) where ``values`` first rises through ``level``."""
    for i in range(1, len(values)):
        lo, hi = values[i - 1], values[i]
        if lo < level <= hi:
            f = (level - lo) / (hi - lo)
            return float(math.exp(math.log(sigma[i - 1])
                                  + f * (math.log(sigma[i]) - math.log(sigma[i - 1]))))
    return None


def reading(results: dict, preset: Preset) -> list[str]:
    """Computed observations per data set: the bits/dim ranking and whether its gaps exceed
    the seed spread, sample metrics relative to their floor, the tuned tail index, and from
    the diagnostics where each field's posterior turns over and where its loss gap is largest.
    """
    lines = []
    c0 = preset.cells[0][0]
    for ds, res in results.items():
        fields = {n: e for n, e in res["fields"].items() if e.get("seeds")}
        if not fields:
            continue
        ranked = sorted(fields, key=lambda n: mean_std(seed_values(fields[n], None, "bits"))[0])
        best, second = ranked[0], ranked[1] if len(ranked) > 1 else None
        text = f"**{ds}**: bits/dim ranking " + " < ".join(ranked)
        if second:
            sep = beats(seed_values(fields[best], None, "bits"),
                        seed_values(fields[second], None, "bits"), True)
            text += (f"; {best} leads {second} by " + ("more" if sep else "less")
                     + " than the seed spread")
        m = primary(res)
        floor = res["floors"][m]
        ratios = {n: mean_std(seed_values(e, c0, m))[0] / floor for n, e in fields.items()}
        text += (f". {m} at {c0} is {min(ratios.values()):.1f}–{max(ratios.values()):.1f}× "
                 f"its floor ({floor:.3g})")
        ep = res["fields"].get("exppower", {}).get("tune")
        if ep:
            text += (f"; exppower's tuned tail index β = "
                     f"{ep['best_params'].get('physics.beta', math.nan):.2f} (2 = VE)")
        diag = {n: e["diagnostics"] for n, e in res["fields"].items() if "diagnostics" in e}
        if diag:
            parts = []
            for n, d in diag.items():
                cross = crossing(d["sigma"], d["entropy"])
                gaps = [m - x for m, x in zip(d["loss_model"], d["loss_exact"])]
                k = int(np.argmax(gaps))
                parts.append(f"{n}: entropy ½ at σ ≈ "
                             + ("—" if cross is None else f"{cross:.2g}")
                             + f", largest loss gap at σ = {d['sigma'][k]:g} "
                             f"({d['loss_model'][k]:.3g} vs exact {d['loss_exact'][k]:.3g})")
            text += ". Diagnostics — " + "; ".join(parts)
        lines += [text + ".", ""]
    return lines


def figures(out: Path, results: dict) -> list[str]:
    """One figure per data set: loss by noise level (model solid, exact dashed), posterior
    entropy over σ, and KL(p_tmax || prior) per field. Returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for ds, res in results.items():
        diag = {n: e["diagnostics"] for n, e in res["fields"].items() if "diagnostics" in e}
        if not diag:
            continue
        fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
        for i, (name, d) in enumerate(diag.items()):
            c = f"C{i}"
            ax[0].loglog(d["sigma"], d["loss_model"], "-o", ms=3, color=c, label=name)
            ax[0].loglog(d["sigma"], d["loss_exact"], "--", color=c, alpha=0.6)
            ax[1].semilogx(d["sigma"], d["entropy"], "-o", ms=3, color=c, label=name)
        ax[0].set(xlabel="σ", ylabel="weighted denoiser loss λ(σ)·MSE/d",
                  title="loss by noise level (solid: model, dashed: exact)")
        ax[1].set(xlabel="σ", ylabel="entropy / log M",
                  title="exact posterior-weight entropy (M = diag. points)")
        kl = [max(d["prior_kl_nats"], 1e-6) for d in diag.values()]
        ax[2].bar(range(len(diag)), kl, color=[f"C{i}" for i in range(len(diag))])
        ax[2].set_xticks(range(len(diag)), list(diag), rotation=20)
        ax[2].set_yscale("log")
        ax[2].set(ylabel="nats (≤ 1e-6 drawn at 1e-6)",
                  title="prior mismatch KL(p_tmax || prior), MC")
        for a in ax[:2]:
            a.legend(fontsize=8)
            a.grid(alpha=0.3)
        fig.suptitle(f"{ds}: diagnostics of each field's tuned setting (seed 0)")
        fig.tight_layout()
        name = f"{out.stem}_{ds}_diagnostics.png"
        fig.savefig(out.parent / name, dpi=90)
        plt.close(fig)
        names.append(name)
    return names


def sampler_text() -> str:
    """``TPESampler, seed 0, 5 random start-up trials`` from conf/hparams_search/optuna.yaml."""
    sampler = hparams_search_sweeper().sampler
    return (f"{sampler._target_.rsplit('.', 1)[-1]}, seed {sampler.seed}, "
            f"{sampler.n_startup_trials} random start-up trials")


def write_report(out: Path, preset: Preset, results: dict, invocations: list, command: str,
                 pending: list[str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    figs = figures(out, results)
    v = verdict(results, preset)
    cpu = sum(i["cpu_seconds"] for i in invocations)
    wall = sum(i["wall_seconds"] for i in invocations if not i.get("unit"))
    cells = preset.cells
    lines = [
        "# New fields vs the classics, at equal tuning budget (issue 17)",
        "",
        f"Written by `{command}` (preset **{preset.name}**: {preset.notes}). "
        f"CPU time of the study so far: {cpu / 60:.1f} min of one core, summed over "
        f"{len(invocations)} invocations (their wall times add up to {wall / 60:.1f} min; "
        "invocations that ran side by side count separately, so the elapsed time was "
        "shorter). Every number below comes from this command; "
        "`--report-only` rewrites the page from the finished runs.",
        "",
    ]
    if pending:
        lines += [f"**Incomplete:** the data set(s) {', '.join(pending)} had not finished "
                  "when this page was written; they are left out.", ""]
    toys = [ds for ds, r in results.items() if r.get("kind", "points") == "points"]
    images = [ds for ds, r in results.items() if r.get("kind") == "images"]
    leg = preset.image
    lines += [
        "## Protocol",
        "",
        f"* Toy data: 2-D sets {', '.join(toys) or '—'} (standardised; training set: "
        "50,000 points, seed 0). Validation, test, reference and floor points are fresh "
        "draws of the true law (other seeds). Network: "
        f"{' '.join(preset.network)}; Adam, gradient clip 1 (train.py's defaults); preset "
        f"overrides: {' '.join(preset.extra) or 'none'}.",
    ]
    if images:
        lines.append(
            "* Image data: scikit-learn's 8×8 digits (1,797 images; training split 90 %, "
            f"held-out 10 %, conf/dataset/digits.yaml). Network: {' '.join(leg.network)} "
            f"({' '.join(leg.extra)}): the same small network for every field, chosen so "
            "that exact-divergence bits/dim stays affordable (a U-Net needs minutes per "
            "likelihood evaluation on this machine).")
    lines += [
        "* The EMA weights are scored.",
        "* **Tuning, the same for every field**: Optuna with the sampler of `python train.py "
        f"hparams_search=optuna` (conf/hparams_search/optuna.yaml: {sampler_text()}; the "
        "trials run in-process because their objective, held-out bits/dim, is not a metric "
        "train.py returns), "
        f"{preset.trials} trials × {preset.trial_steps} steps on toys"
        + (f", × {leg.trial_steps} on digits" if images else "")
        + f" (training seed {preset.tune_seed}); objective: held-out bits/dim on "
        f"{preset.tune_nll_n} validation points"
        + (f" ({leg.n_val} dequantised held-out images on digits)" if images else "")
        + ". Knobs: every field tunes `optim.lr` [5e-4, 8e-3] (log), "
        "`callbacks.ema.half_life_images` [1e4, 1e6] (log), `physics.train_p_mean` "
        "[−2, 0.5], `physics.train_p_std` [0.8, 2] and `physics.t_max` (log; ve, "
        "pfgmpp_D128, exppower [5, 160]; poisson [10, 400]; radial [20, 400]); radial also "
        "its profile {tanh, exp}, exppower its tail index β [0.5, 8] (log). PFGM++ keeps "
        "D = 128 (the baseline the target names).",
        f"* **Retraining**: the best trial's setting, seeds {list(preset.seeds)}, "
        f"{preset.final_steps} steps each on toys"
        + (f", {leg.final_steps} on digits" if images else "") + ".",
        f"* **Scores** (mean ± std over seeds): bits/dim of {preset.nll_n} fresh test points "
        "(probability-flow ODE, exact divergence, dopri5 rtol = atol = 1e-4; the density at "
        "t_min, as `sample.py task=likelihood`); at NFE ≤ 10 (" + cells[0][1]
        + f", {cells[0][2]} steps) and NFE ≤ 35 ({cells[1][1]}, {cells[1][2]} steps): "
        f"n = {preset.n:,} samples (fixed prior noise) against n = {preset.n:,} fresh "
        f"reference points — sliced W2 (`sw`, all n), MMD² (Gaussian kernels, 5 bandwidths) "
        "and improved precision/recall (k = 3) on "
        + (f"the first {preset.n_heavy:,} of each" if preset.n_heavy else "all n")
        + ". **Floor**: each sample metric for "
        f"another {preset.n:,} fresh data points against the same reference — what a "
        "perfect model scores.",
    ]
    if images:
        fl = results[images[0]]["floors"]
        lines.append(
            f"* **Digits scores**: bits/dim of the other {fl.get('n_test', 'held-out')} "
            "held-out images, dequantised (uniform noise of one grey level, 1/8, added "
            f"once with a fixed seed); at both NFE budgets n = {leg.n:,} generated images "
            f"against a reference of {fl['n']} real digits (a seeded half of all 1,797), in "
            f"the feature space of {fl['extractor']}: FID, KID (subsets of "
            f"{leg.kid_subset_size}) and improved precision/recall (k = 3). **Floor**: the "
            f"other {fl['n_floor']} digits against the same reference. The training split "
            "overlaps both halves, so a model that memorised it would score near the floor.")
    lines += [
        "* **Verdict rule** (issue 17's target): a new field (radial, exppower) beats a "
        "baseline on a metric when its mean is better by more than the larger of the two "
        "seed standard deviations; the target needs both baselines beaten on ≥ 2 data sets "
        "(on bits/dim, or on the primary sample metric at NFE ≤ 10: sw on toys, FID on "
        "digits).",
        "",
        "## Results",
        "",
    ]
    for ds, res in results.items():
        fl = res["floors"]
        columns = COLUMNS[res.get("kind", "points")]
        lines += [f"### {ds}", "",
                  "| field | best-of-budget (val bits/dim) | bits/dim (test) | "
                  + " | ".join(" | ".join(f"{m} {c[0]}" for m, _ in columns)
                               + f" | P / R {c[0]}" for c in cells) + " |",
                  "|---|---|---|" + ("---|" * (len(columns) + 1)) * len(cells)]
        for name, e in res["fields"].items():
            if "tune" not in e:
                continue
            row = [f"**{name}**" if e["new"] else name, f"{e['tune']['best_value']:.4f}",
                   fmt(seed_values(e, None, "bits"))]
            for c in cells:
                row += [fmt(seed_values(e, c[0], m), digits) for m, digits in columns]
                row.append(fmt(seed_values(e, c[0], "precision"), 3) + " / "
                           + fmt(seed_values(e, c[0], "recall"), 3))
            lines.append("| " + " | ".join(row) + " |")
        floor_row = ["floor (data vs data)", "—", "—"]
        for _ in cells:
            floor_row += [f"{fl[m]:.{digits}g}" for m, digits in columns]
            floor_row.append(f"{fl['precision']:.3f} / {fl['recall']:.3f}")
        lines.append("| " + " | ".join(floor_row) + " |")
        lines += ["", "Best settings (tuned):", ""]
        for name, e in res["fields"].items():
            if "tune" in e:
                lines.append(f"* {name}: {short_params(e['tune']['best_params'])}")
        diag = {n: e["diagnostics"] for n, e in res["fields"].items() if "diagnostics" in e}
        if diag:
            lines += ["", "Prior mismatch KL(p_tmax ‖ prior) (nats, ± s.e.): "
                      + ", ".join(f"{n} {d['prior_kl_nats']:.3g} ± {d['prior_kl_sem']:.1g}"
                                  for n, d in diag.items()) + ".", "",
                      f"![diagnostics {ds}]({out.stem}_{ds}_diagnostics.png)", ""]
        nf = sum(c.get("nonfinite", 0) for e in res["fields"].values()
                 for s in e.get("seeds", {}).values() for c in s["cells"].values())
        lines += [f"Non-finite samples (left out of the sample metrics): {nf}.", ""]
    lines += slice_section(out, results)
    lines += ["## Reading the numbers (computed from the tables)", "", *reading(results, preset)]
    lines += ["## Verdict (computed)", ""]
    for label, per_ds in v["table"].items():
        lines.append(f"* {label}: new fields beating both ve and pfgmpp_D128 by more than "
                     "the seed spread — " + "; ".join(
                         f"{ds}: {', '.join(w) or 'none'}" for ds, w in per_ds.items()))
    lines += ["", "Target (one new field beats both on ≥ 2 data sets): "
              + "; ".join(f"{label}: {', '.join(w) if w else 'not met'}"
                          for label, w in v["met"].items()), ""]
    commentary = out.parent / f"{out.stem}_why.md"
    if commentary.is_file():
        lines += [f"## Why: reading the diagnostics (hand-written, {commentary.name})", "",
                  commentary.read_text().strip(), ""]
    out.write_text("\n".join(lines) + "\n")
    data = {"preset": preset.name, "results": results, "verdict": v,
            "invocations": invocations, "command": command, "figures": figs}
    out.with_suffix(".json").write_text(json.dumps(data, indent=2, default=str))
