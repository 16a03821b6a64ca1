"""Training and loading the runs of one data set and field (teacher, reflow and consistency
students), each skipped when finished and continued when interrupted, then their evaluations.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from unified_ode.app.build import build_module
from unified_ode.app.runs import LAST_CKPT, load_run_config, load_weights
from unified_ode.app.train import run_training

from .presets import FIELDS, QUIET, ROOT, TOY, presets
from .scoring import Scorer, evaluate


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
