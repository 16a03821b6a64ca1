"""Distillation benchmark: one- and few-step students of every field against their teachers.

    python bench/distill.py                      # the preset: toy2d x {poisson, pfgmpp, ve, linear}
    python bench/distill.py --datasets digits --fields ve   # digits (FID with Inception)
    python bench/distill.py --report-only        # rewrite docs/distillation.md from results
    # digits with a trained teacher (read only), a consistency student, 3 FIDs:
    python bench/distill.py --datasets digits --fields ve --teacher <run dir> \
        --methods consistency --low-nfe 2 --teacher-solvers dpmpp2m --fid-n 1000

For each data set and field: a teacher run (``train.py`` config, trained once and reused: its run
directory is kept under ``--out``), a ``distill=reflow`` student and a ``distill=consistency``
student of it (both initialised from the teacher's weights). Every model is sampled from the same
prior draws: the teacher at NFE 35 (Heun, 18 steps) and at NFE 1, 2, 4 (the better of Euler and
DPM-Solver++(2M) at each budget), the reflow student with Euler at 1, 2, 4 steps, the consistency
student with ``solver=consistency`` at 1, 2, 4 steps. Metric: sliced Wasserstein distance to 2000
held-out points (toy2d, ``sw@2k``) or FID against the training images with the Inception
extractor (digits; ``--fid-n`` samples; the reference features are those the training runs'
metrics cache). ``--teacher`` uses an existing ``train.py`` run (read only) as the teacher of
one data set and field instead of training one; its students get its own overrides.

The evaluations and commands also go to ``<docs>/distillation_results.json``, which
``--merge`` reads back (with any other results files), so a later run adds rows to the page
without rerunning the earlier ones.

Resumable: every stage (teacher, pairs, student, each evaluation) is skipped when its output
exists (``<out>/results.json`` holds the evaluations and the wall time of each stage), so an
interrupted run continues where it stopped. Timings under a shared machine's load are inflated.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unified_ode.app.build import build_module  # noqa: E402
from unified_ode.app.runs import LAST_CKPT, load_run_config, load_weights  # noqa: E402
from unified_ode.app.train import run_training  # noqa: E402

TOY = ("checkerboard", "moons", "eight_gaussians")
FIELDS = {"poisson": ["physics=poisson"], "pfgmpp": ["physics=pfgmpp", "physics.D=128"],
          "ve": ["physics=ve"], "linear": ["physics=linear"]}
LOW_NFE = (1, 2, 4)
QUIET = ["~callbacks.metrics", "~callbacks.best", "~callbacks.figures", "~callbacks.progress",
         "logger=csv", "trainer.enable_model_summary=false", "+trainer.enable_progress_bar=false"]


def presets(args) -> dict:
    """Overrides per data kind: ``teacher``, ``student`` (both methods), ``reflow``,
    ``consistency``."""
    toy = {
        "teacher": ["dataset.n_train=20000", "network.width=128", "network.depth=3",
                    "dataset.batch_size=256", f"trainer.max_steps={args.teacher_steps}",
                    "callbacks.checkpoint.every_n_train_steps=500"],
        "student": [f"trainer.max_steps={args.student_steps}", "optim.lr=1e-3",
                    "lr_warmup_steps=50"],
        "reflow": [f"distill.pairs={args.pairs}", "distill.chunk=2000"],
        "consistency": ["distill.intervals=18"],
    }
    digits = {
        "teacher": ["experiment=digits_" + "{field}", f"trainer.max_steps={args.teacher_steps}",
                    "callbacks.checkpoint.every_n_train_steps=500"],
        "student": [f"trainer.max_steps={args.student_steps}", "optim.lr=1e-3",
                    "lr_warmup_steps=50"],
        "reflow": [f"distill.pairs={args.pairs}", "distill.chunk=500"],
        "consistency": ["distill.intervals=18"],
    }
    return {"toy": toy, "digits": digits}


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def train(run_dir: Path, overrides: list[str], log) -> float | None:
    """Train the run ``overrides`` into ``run_dir`` unless it holds a finished checkpoint;
    writes ``.hydra/{config,overrides}.yaml`` as train.py would. Returns the seconds spent (None
    when skipped)."""
    if (run_dir / LAST_CKPT).is_file() and (run_dir / "done").is_file():
        return None
    if (run_dir / LAST_CKPT).is_file():  # interrupted: continue it
        overrides = [*overrides, "resume=true"]
    cfg = compose_train([*overrides, f"run_dir={run_dir}"])
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    saved = [o for o in overrides if o != "resume=true"]
    OmegaConf.save(cfg, hydra_dir / "config.yaml")
    OmegaConf.save(OmegaConf.create(saved), hydra_dir / "overrides.yaml")
    log(f"training {run_dir.name}: {' '.join(saved)}")
    start = time.perf_counter()
    run_training(cfg)
    seconds = time.perf_counter() - start
    (run_dir / "done").write_text(f"{seconds:.1f}\n")
    return seconds


def load_run(run_dir: Path):
    cfg, _ = load_run_config(run_dir)
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "distill"])
    module, datamodule = build_module(cfg)
    load_weights(module, run_dir / LAST_CKPT, "bench", ema=True)
    module.eval()
    return module, datamodule


class Scorer:
    """sw@2k against held-out points (toy2d) or FID against training images (digits)."""

    def __init__(self, datamodule, kind: str, fid_n: int):
        self.kind = kind
        if kind == "toy":
            from unified_ode.metrics.points import sliced_wasserstein

            self.reference = datamodule.heldout(2000)
            self.fn = lambda x: sliced_wasserstein(x.float(), self.reference.float())
            self.n, self.name = 2000, "sw@2k"
        else:  # FID against fid_n training images, the reference the metrics callback caches
            from unified_ode.metrics.scoring import SampleScorer

            scorer = SampleScorer(n_samples=fid_n, inception_score=False,
                                  kid_subset_size=min(1000, fid_n))
            scorer.prepare(datamodule)
            self.name = scorer.primary("images")
            self.n = fid_n
            self.fn = lambda x: float(scorer.score_samples(x)[self.name])

    def __call__(self, x) -> float:
        return float(self.fn(x))


TEACHER_SOLVERS = ("euler", "dpmpp2m")


def solvers_for(what: str, nfe: int, teacher_solvers=TEACHER_SOLVERS):
    from unified_ode.solvers import ConsistencySampler, DPMSolverPP2M, Euler, Heun

    if what == "teacher35":
        return [("heun", Heun(steps=18))]
    if what == "teacher":
        made = {"euler": lambda: Euler(steps=nfe), "dpmpp2m": lambda: DPMSolverPP2M(steps=nfe)}
        return [(name, made[name]()) for name in teacher_solvers]
    if what == "reflow":
        return [("euler", Euler(steps=nfe))]
    return [("consistency", ConsistencySampler(steps=nfe, seed=0))]


def evaluate(results, key, module, scorer, prior, what, nfe, samples_dir: Path, log,
             teacher_solvers=TEACHER_SOLVERS):
    if key in results["evals"]:
        return results["evals"][key]
    best = None
    for name, solver in solvers_for(what, nfe, teacher_solvers):
        start = time.perf_counter()
        chunks = []
        with torch.no_grad():
            for lo in range(0, prior.shape[0], 500):
                r = module.sample(x_T=prior[lo:lo + 500], solver=solver)
                chunks.append(r.x)
        x = torch.cat(chunks)
        seconds = time.perf_counter() - start
        score = scorer(x) if torch.isfinite(x).all() else float("inf")
        if best is None or score < best["score"]:
            best = {"score": score, "solver": name, "nfe": r.nfe, "seconds": seconds}
            torch.save(x[:2000].cpu(), samples_dir / f"{key.replace('/', '_')}.pt")
    results["evals"][key] = best
    log(f"  {key}: {scorer.name} = {best['score']:.4g} ({best['solver']}, NFE {best['nfe']})")
    return best


def run_case(dataset, fname, args, results, save, log):
    kind = "toy" if dataset in TOY else "digits"
    pre = presets(args)[kind]
    out = Path(args.out)
    base = f"{dataset}/{fname}"
    if kind == "toy":
        teacher_over = [f"dataset.name={dataset}", *FIELDS[fname], *pre["teacher"], *QUIET]
    else:
        if fname not in ("poisson", "pfgmpp", "ve"):
            teacher_over = ["experiment=digits_ve", *FIELDS[fname]]
        else:
            teacher_over = [f"experiment=digits_{fname}"]
        teacher_over = [*teacher_over, *pre["teacher"][1:], *QUIET]
        if fname == "pfgmpp":
            teacher_over.append("physics.D=128")
    if args.teacher:  # an existing run, used read-only; its students get its overrides
        tdir = Path(args.teacher)
        if not (tdir / LAST_CKPT).is_file():
            raise SystemExit(f"--teacher {tdir}: no {LAST_CKPT} (is its training finished?)")
        teacher_over = [*OmegaConf.load(tdir / ".hydra" / "overrides.yaml"), *QUIET]
        teacher_over = [o for o in teacher_over  # not how the teacher was run or resumed
                        if not o.startswith(("trainer.val_check", "resume=", "ckpt_path="))]
        results["teachers"][base] = str(tdir)
    else:
        tdir = out / dataset / fname / "teacher"
        sec = train(tdir, teacher_over, log)
        if sec is not None:
            results["stages"][f"{base}/teacher"] = sec
            save()
    student_common = [o for o in teacher_over if not o.startswith("trainer.max_steps")
                      and not o.startswith(("optim.", "lr_warmup_steps"))]
    for method in ("reflow", "consistency"):
        if method not in args.methods:
            continue
        sdir = out / dataset / fname / method
        over = [*student_common, f"distill={method}", f"distill.teacher={tdir}",
                *pre["student"], *pre[method]]
        if method == "reflow":  # pairs shared by the field's students across reruns
            over.append(f"distill.cache_dir={out / dataset / fname / 'pairs'}")
        sec = train(sdir, over, log)
        if sec is not None:
            results["stages"][f"{base}/{method}"] = sec
            save()
    # evaluations from one set of prior draws
    teacher, datamodule = load_run(tdir)
    scorer = Scorer(datamodule, kind, args.fid_n)
    g = torch.Generator().manual_seed(7)
    prior = teacher.sample_prior(scorer.n, generator=g)
    samples_dir = out / "samples"
    samples_dir.mkdir(parents=True, exist_ok=True)
    # the teacher at NFE 35 and the students first: the pairs the targets compare
    evaluate(results, f"{base}/teacher/35", teacher, scorer, prior, "teacher35", 35,
             samples_dir, log)
    save()
    for method in ("reflow", "consistency"):
        if method not in args.methods:
            continue
        student, _ = load_run(out / dataset / fname / method)
        for nfe in args.low_nfe:
            evaluate(results, f"{base}/{method}/{nfe}", student, scorer, prior, method, nfe,
                     samples_dir, log)
            save()
    for nfe in args.low_nfe:
        evaluate(results, f"{base}/teacher/{nfe}", teacher, scorer, prior, "teacher", nfe,
                 samples_dir, log, args.teacher_solvers)
        save()
    results["metric"][dataset] = scorer.name
    save()


# --- report -----------------------------------------------------------------------------
def fmt(ev) -> str:
    return "–" if ev is None else f"{ev['score']:.3g}"


def report(results, args, path: Path, figure_paths) -> None:
    ev = results["evals"]
    lines = ["# Distillation: one- and few-step students of every field", "",
             "Generated by `python bench/distill.py` (" + "; ".join(results["commands"]) + "); "
             "every number below was measured by that command on a shared 2-core CPU "
             "(wall times inflated by the load). Teachers: `train.py` runs of each field; "
             "students: `distill=reflow` (Euler) and `distill=consistency` "
             "(`solver=consistency`), both initialised from the teacher's weights. Teacher at low "
             "NFE: the better of Euler and DPM-Solver++(2M) (digits: DPM-Solver++(2M) only). "
             "Same prior draws for every column. Digits: the teacher is an existing run "
             "(`--teacher`, listed under Settings) and only a consistency student is trained, "
             "to keep to 3 Inception FIDs on one CPU core. `distill=progressive` (halving DDIM "
             "steps per round) is implemented and tested but not part of this benchmark.",
             "", *settings_table(results), ""]
    for dataset in sorted({k.split("/")[0] for k in ev}, key=lambda d: (d not in TOY, d)):
        metric = results["metric"].get(dataset, "metric")
        lines += [f"## {dataset} ({metric}, lower is better)", "",
                  "| field | teacher NFE 35 | teacher 1 | teacher 2 | teacher 4 | reflow 1 | "
                  "reflow 2 | reflow 4 | consistency 1 | consistency 2 | consistency 4 | "
                  "1-step student / teacher@35 |",
                  "|---|" + "---|" * 11]
        for fname in FIELDS:
            base = f"{dataset}/{fname}"
            if f"{base}/teacher/35" not in ev:
                continue
            row = [fname, fmt(ev.get(f"{base}/teacher/35"))]
            row += [fmt(ev.get(f"{base}/teacher/{n}")) for n in LOW_NFE]
            row += [fmt(ev.get(f"{base}/reflow/{n}")) for n in LOW_NFE]
            row += [fmt(ev.get(f"{base}/consistency/{n}")) for n in LOW_NFE]
            one = [ev.get(f"{base}/{m}/1") for m in ("reflow", "consistency")]
            one = [o["score"] for o in one if o]
            ratio = min(one) / ev[f"{base}/teacher/35"]["score"] if one else None
            row.append("–" if ratio is None else f"{ratio:.2f}")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        if dataset in figure_paths:
            lines += [f"![{dataset}]({figure_paths[dataset].name})", "",
                      "Columns: teacher NFE 35, teacher NFE 2, reflow student NFE 1, "
                      "consistency student NFE 1.", ""]
    lines += summary(ev)
    lines += digits_summary(ev, results["metric"])
    lines += verdict(ev)
    lines += far_out(Path(args.out))
    missing = [f"{d}/{f}" for d in TOY for f in FIELDS if f"{d}/{f}/teacher/35" not in ev]
    if not any(f"digits/{f}/teacher/35" in ev for f in FIELDS):
        missing.append("digits (any field)")
    if missing:
        lines += ["## Not measured in this run", "",
                  "No numbers yet for: " + ", ".join(missing) + ". The command is resumable: "
                  "rerun it with the settings above (e.g. `python bench/distill.py --datasets "
                  "moons --fields poisson`; digits: the command in the module docstring) and "
                  "then `python bench/distill.py --report-only --readme`.", ""]
    lines += ["## Wall time of each stage (seconds, shared machine)", "",
              "| stage | seconds |", "|---|---|"]
    for k, v in sorted(results["stages"].items()):
        lines.append(f"| {k} | {v:.0f} |")
    lines += ["", "Evaluation (sampling) seconds per entry are in `results.json` under `evals`.",
              ""]
    path.write_text("\n".join(lines))


def far_out(out: Path) -> list[str]:
    """Share of toy samples with ``|x| > 4`` (the data are standardised): the heavy-tailed
    priors' stragglers, which dominate a sliced Wasserstein distance."""
    found = {p.name: p for p in out.rglob("samples/*.pt")}
    lines = ["## Far-out samples (share with |x| > 4; toy data are standardised)", "",
             "| set | field | teacher NFE 35 | reflow NFE 1 | consistency NFE 1 |",
             "|---|---|---|---|---|"]
    for d in TOY:
        for f in FIELDS:
            cells = []
            for tag in ("teacher_35", "reflow_1", "consistency_1"):
                p = found.get(f"{d}_{f}_{tag}.pt")
                if p is None:
                    cells.append("–")
                    continue
                x = torch.load(p, weights_only=True)
                cells.append(f"{(x.norm(dim=1) > 4).float().mean().item():.2%}")
            if any(c != "–" for c in cells):
                lines.append(f"| {d} | {f} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def settings_table(results) -> list[str]:
    """One row per data set and field: the teacher, the training steps, the pairs, the
    methods and low NFEs evaluated."""
    rows = {}
    for key, value in results.get("settings", {}).items():
        if "fields" in value:  # a file written before settings were kept per field
            for f in value["fields"]:
                rows.setdefault(f"{key}/{f}", value)
        else:
            rows[key] = value
    lines = ["| set / field | teacher | teacher steps | student steps | reflow pairs | methods "
             "| low NFE |", "|---|---|---|---|---|---|---|"]
    for key in sorted(rows, key=lambda k: (k.split("/")[0] not in TOY, k)):
        v = rows[key]
        teacher = v.get("teacher") or "trained here"
        methods = v.get("methods") or ["reflow", "consistency"]
        pairs = v.get("pairs") if "reflow" in methods else "–"
        low = v.get("low_nfe") or list(LOW_NFE)
        lines.append(f"| {key} | {teacher} | {v.get('teacher_steps') or '–'} | "
                     f"{v.get('student_steps')} | {pairs} | {', '.join(methods)} | "
                     f"{', '.join(map(str, low))} |")
    return ["## Settings", "", *lines]


def digits_summary(ev, metric) -> list[str]:
    """The image target: a 2-step student's FID against the teacher's at NFE 35 (≤ 1.5×)."""
    lines = []
    for fname in FIELDS:
        t35, t2 = ev.get(f"digits/{fname}/teacher/35"), ev.get(f"digits/{fname}/teacher/2")
        for method in ("reflow", "consistency"):
            two = ev.get(f"digits/{fname}/{method}/2")
            if not (two and t35):
                continue
            r = two["score"] / t35["score"]
            lines.append(f"| {fname} | {method} | {two['score']:.3g} | {t35['score']:.3g} | "
                         f"{fmt(t2)} | {r:.2f} | {'yes' if r <= 1.5 else 'no'} |")
    if not lines:
        return []
    name = metric.get("digits", "fid")
    return [f"## Digits: 2-step students ({name}, target ≤ 1.5× the teacher at NFE 35)", "",
            "| field | method | student NFE 2 | teacher NFE 35 | teacher NFE 2 | ratio | "
            "meets ≤ 1.5× |", "|---|---|---|---|---|---|---|", *lines, ""]


def ratio_range(ev, fname, method, nfe) -> tuple[list[float], int]:
    """``(ratios, sets meeting both toy targets)``: the ``nfe``-step student's sw over the
    teacher's at NFE 35 on each toy set, and on how many sets it is ≤ 1.5× and better than
    the teacher's best 2-NFE samples."""
    ratios, ok = [], 0
    for d in TOY:
        st, t35 = ev.get(f"{d}/{fname}/{method}/{nfe}"), ev.get(f"{d}/{fname}/teacher/35")
        t2 = ev.get(f"{d}/{fname}/teacher/2")
        if st and t35 and t2:
            ratios.append(st["score"] / t35["score"])
            ok += ratios[-1] <= 1.5 and st["score"] < t2["score"]
    return ratios, ok


def verdict(ev) -> list[str]:
    """Which fields distil well: per field, each method's 1-step (consistency also 2-step)
    ratio to the teacher at NFE 35 over the toy sets, and the digits FID ratio."""
    lines, good, bad = [], [], []
    for fname in FIELDS:
        parts, meets = [], False
        for method, nfe in (("reflow", 1), ("consistency", 1), ("consistency", 2)):
            ratios, ok = ratio_range(ev, fname, method, nfe)
            if not ratios:
                continue
            parts.append(f"{method} NFE {nfe}: {min(ratios):.2f}–{max(ratios):.2f}× "
                         f"(targets met on {ok}/{len(ratios)} sets)")
            meets |= nfe == 1 and ok == len(ratios) == len(TOY)
        for method in ("reflow", "consistency"):
            two, t35 = ev.get(f"digits/{fname}/{method}/2"), ev.get(f"digits/{fname}/teacher/35")
            if two and t35:
                parts.append(f"digits {method} NFE 2: FID {two['score']:.3g} vs teacher@35 "
                             f"{t35['score']:.3g} ({two['score'] / t35['score']:.2f}×)")
        if parts:
            lines.append(f"- **{fname}**: " + "; ".join(parts) + ".")
            (good if meets else bad).append(fname)
    if not lines:
        return []
    head = ["## Verdict (generated from the tables above)", "",
            "Student sw / teacher sw at NFE 35, lowest–highest over the toy sets (targets: ≤ 1.5× "
            "and better than the teacher's own 2-NFE samples). A ratio below 1 is no better "
            "student: the teacher's NFE-35 samples hold far-out points that dominate sw (see "
            "the far-out table below).", ""]
    tail = ["", f"A 1-step student meets both toy targets on all {len(TOY)} sets for: "
            f"{', '.join(good) or 'none'}; not (or not measured on every set) for: "
            f"{', '.join(bad) or 'none'}.", ""]
    return [*head, *lines, *tail]


def summary(ev) -> list[str]:
    """Per field and method: how often the 1-step student meets the issue's targets on the
    toy sets (sw ≤ 1.5× the teacher's at NFE 35; better than the teacher's best 2-NFE)."""
    lines = ["## Which fields distil well (toy2d, 1-step students)", "",
             "| field | method | 1-step / teacher@35 (per set) | meets ≤ 1.5× | beats teacher@2 |",
             "|---|---|---|---|---|"]
    for fname in FIELDS:
        for method in ("reflow", "consistency"):
            ratios, ok, beat = [], 0, 0
            for d in TOY:
                one, t35 = ev.get(f"{d}/{fname}/{method}/1"), ev.get(f"{d}/{fname}/teacher/35")
                t2 = ev.get(f"{d}/{fname}/teacher/2")
                if not (one and t35 and t2):
                    continue
                r = one["score"] / t35["score"]
                ratios.append(f"{d}: {r:.2f}")
                ok += r <= 1.5
                beat += one["score"] < t2["score"]
            if ratios:
                lines.append(f"| {fname} | {method} | {', '.join(ratios)} | {ok}/{len(ratios)} "
                             f"| {beat}/{len(ratios)} |")
    return [*lines, ""]


README_START, README_END = "<!-- distill-table -->", "<!-- /distill-table -->"


def readme_table(ev, metric) -> str:
    """The compact table README.md shows (between its distill-table markers)."""
    lines = [README_START, "",
             "| set | field | teacher NFE 35 | teacher NFE 2 | reflow NFE 1 | consistency NFE 1 "
             "| consistency NFE 2 |", "|---|---|---|---|---|---|---|"]
    for d in sorted({k.split("/")[0] for k in ev}, key=lambda d: (d not in TOY, d)):
        for f in FIELDS:
            b = f"{d}/{f}"
            if f"{b}/teacher/35" not in ev:
                continue
            cells = [fmt(ev.get(f"{b}/{k}")) for k in ("teacher/35", "teacher/2", "reflow/1",
                                                       "consistency/1", "consistency/2")]
            lines.append(f"| {d} ({metric.get(d, '?')}) | {f} | " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", README_END])


def update_readme(ev, metric, path: Path) -> None:
    text = path.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{path} has no {README_START} ... {README_END} block")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    path.write_text(head + readme_table(ev, metric) + tail)


def figures(results, out: Path, docs: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    for dataset in TOY:
        found = {p.name: p for p in out.rglob("samples/*.pt")}
        fields = [f for f in FIELDS if f"{dataset}_{f}_teacher_35.pt" in found]
        if not fields:
            continue
        cols = [("teacher_35", "teacher NFE 35"), ("teacher_2", "teacher NFE 2"),
                ("reflow_1", "reflow NFE 1"), ("consistency_1", "consistency NFE 1")]
        fig, axes = plt.subplots(len(fields), len(cols), figsize=(3 * len(cols), 3 * len(fields)),
                                 squeeze=False)
        for i, f in enumerate(fields):
            for j, (tag, title) in enumerate(cols):
                ax = axes[i, j]
                p = found.get(f"{dataset}_{f}_{tag}.pt")
                if p is not None:
                    x = torch.load(p, weights_only=True)
                    ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.5)
                    ev = results["evals"].get(f"{dataset}/{f}/{tag.replace('_', '/')}")
                    if ev:
                        title = f"{title}\nsw={ev['score']:.3f}"
                ax.set_title(f"{f}: {title}", fontsize=8)
                ax.set_xlim(-3, 3)
                ax.set_ylim(-3, 3)
                ax.set_xticks([])
                ax.set_yticks([])
        fig.tight_layout()
        paths[dataset] = docs / f"distillation_{dataset}.png"
        fig.savefig(paths[dataset], dpi=80)
        plt.close(fig)
    return paths


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
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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


if __name__ == "__main__":
    main()
