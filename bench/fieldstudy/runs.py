"""Training (``train.py``'s own :func:`~unified_ode.app.train.run_training`, in this process)
and tuning (Optuna, TPE, one SQLite study per data set and field).

Every run directory is a complete ``train.py`` run (``.hydra/``, ``config_resolved.yaml``,
``checkpoints/last.ckpt`` with EMA weights), loadable with :func:`unified_ode.api.load_run`.
Resuming: a finished run (marker ``done.json``) is reused; an interrupted one is continued
from its ``last.ckpt`` with ``resume=true``; a finished run trained with other overrides is
refused (never overwritten). An Optuna study keeps its finished trials; a rerun adds only the
missing ones (trials left RUNNING by a killed process are marked FAIL and not counted).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from bench.study.util import log as line

from .presets import DIGITS, FieldSpec, Preset

ROOT = Path(__file__).resolve().parents[2]
DONE = "done.json"
#: seeds of the fresh toy draws (the training set is dataset.seed = 0, held-out = 1)
VAL_SEED, TEST_SEED, REF_SEED, FLOOR_SEED = 101, 202, 303, 404


def write_json(path: Path, data) -> None:
    """Write ``data`` as JSON to ``path`` atomically (a temporary file of this process renamed
    into place): a reader, or a parallel unit, never sees half a file."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def log(msg: str) -> None:
    """``msg`` with the time, as one line in one write (``--jobs`` logs from several threads;
    see :func:`bench.study.util.log`)."""
    line(f"[{time.strftime('%H:%M:%S')}] {msg}")


def base_overrides(preset: Preset, dataset: str, spec: FieldSpec, steps: int,
                   seed: int) -> list[str]:
    """train.py overrides shared by the tuning trials and the final runs (before the tuned
    values): data set, network, field, quiet training (no logger, no in-training metrics or
    figures; the EMA and checkpoint callbacks stay), budget and seed."""
    if dataset == DIGITS:
        data = ["dataset=digits", *preset.image.network, *spec.overrides, *preset.image.extra]
    else:
        data = ["dataset=toy2d", f"dataset.name={dataset}", *preset.network, *spec.overrides,
                *preset.extra]
    return [*data, "logger=none", "~callbacks.metrics", "~callbacks.best",
            "~callbacks.figures", "~callbacks.progress", "+trainer.enable_progress_bar=false",
            f"callbacks.checkpoint.every_n_train_steps={max(steps, 1)}",
            f"trainer.max_steps={steps}", f"seed={seed}"]


def param_overrides(params: dict) -> list[str]:
    return [f"{k}={v}" for k, v in sorted(params.items())]


def train(run_dir: Path, overrides: list[str]) -> dict:
    """Train ``overrides`` into ``run_dir`` (or reuse / continue it); returns the marker
    ``{"overrides", "cpu_seconds", "wall_seconds"}``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from unified_ode.app.resolvers import register_resolvers
    from unified_ode.app.runs import LAST_CKPT
    from unified_ode.app.train import run_training

    marker = run_dir / DONE
    if marker.is_file():
        info = json.loads(marker.read_text())
        if info["overrides"] != overrides:
            raise SystemExit(f"{run_dir} was trained with other overrides:\n  "
                             f"{info['overrides']}\nthis study asks for:\n  {overrides}\n"
                             "It is never overwritten: pass a new --root.")
        return info
    resume = (run_dir / LAST_CKPT).is_file()
    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*overrides, f"run_dir={run_dir}"]
                      + (["resume=true"] if resume else []))
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, hydra_dir / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), hydra_dir / "overrides.yaml")
    cpu, wall = time.process_time(), time.perf_counter()
    run_training(cfg)
    info = {"overrides": overrides, "cpu_seconds": time.process_time() - cpu,
            "wall_seconds": time.perf_counter() - wall, "resumed": resume}
    write_json(marker, info)
    return info


def heldout_bits(run_dir: Path, x, rtol: float = 1e-4) -> dict:
    """Bits/dim of points ``x`` under the run's EMA model (exact divergence, dopri5 at
    ``rtol = atol``): ``{"mean", "sem", "nfe", "n"}``; non-finite values count as failures
    (``nonfinite``) and make the mean ``inf``."""
    import torch

    from unified_ode.api import load_run

    run = load_run(run_dir)
    with torch.enable_grad():
        res = run.log_likelihood(x, rtol=rtol, atol=rtol)
    bpd = res.bits_per_dim().double()
    finite = torch.isfinite(bpd)
    mean = float(bpd.mean()) if bool(finite.all()) else math.inf
    sem = float(bpd.std() / math.sqrt(len(bpd))) if bool(finite.all()) else math.inf
    return {"mean": mean, "sem": sem, "nfe": int(res.nfe), "n": int(len(bpd)),
            "nonfinite": int((~finite).sum())}


def short_params(params: dict) -> str:
    """``lr=0.002, beta=1.3, ...`` (last part of each key, 3 significant digits)."""
    def value(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={value(v)}" for k, v in params.items())


def suggest(trial, spec: FieldSpec) -> dict:
    params = {}
    for key, kind, low, high in spec.space():
        if kind == "cat":
            params[key] = trial.suggest_categorical(key, list(low))
        else:
            params[key] = trial.suggest_float(key, low, high, log=(kind == "log"))
    return params


def hparams_search_sweeper():
    """``hydra.sweeper`` of conf/hparams_search/optuna.yaml: the study tunes with the sampler
    (TPE, its seed and start-up trials) and direction that ``python train.py
    hparams_search=optuna`` uses; the trials run in this process because their objective,
    held-out bits/dim, is not a metric train.py returns."""
    from omegaconf import OmegaConf

    return OmegaConf.load(ROOT / "conf" / "hparams_search" / "optuna.yaml").hydra.sweeper


def tune(root: Path, preset: Preset, dataset: str, spec: FieldSpec, val_points) -> dict:
    """The Optuna study of one (data set, field): ``preset.trials`` trials of
    ``preset.steps(dataset)[0]`` steps (training seed ``preset.tune_seed``; the sampler of
    :func:`hparams_search_sweeper`), objective = held-out bits/dim
    on ``val_points`` (fresh draws, not the test set). Returns ``{"best_params", "best_value",
    "trials": [...], "cpu_seconds"}``."""
    import optuna
    from hydra.utils import instantiate

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sdir = root / "tune" / dataset / spec.name
    sdir.mkdir(parents=True, exist_ok=True)
    sweeper = hparams_search_sweeper()
    study = optuna.create_study(
        study_name=f"{dataset}-{spec.name}", storage=f"sqlite:///{sdir / 'optuna.db'}",
        load_if_exists=True, direction=sweeper.direction,
        sampler=instantiate(sweeper.sampler))
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)  # left by a killed process
    done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    cpu = time.process_time()
    steps = preset.steps(dataset)[0]

    def objective(trial):
        params = suggest(trial, spec)
        over = [*base_overrides(preset, dataset, spec, steps, preset.tune_seed),
                *param_overrides(params)]
        run_dir = sdir / f"trial{trial.number}"
        info = train(run_dir, over)
        bits = heldout_bits(run_dir, val_points)
        trial.set_user_attr("train_cpu_seconds", info["cpu_seconds"])
        trial.set_user_attr("nll_nfe", bits["nfe"])
        value = bits["mean"] if math.isfinite(bits["mean"]) else 1e3
        log(f"  tune {dataset}/{spec.name} trial {trial.number}: bits/dim {value:.4f} "
            f"({short_params(params)})")
        return value

    if done < preset.trials:
        log(f"tune {dataset}/{spec.name}: {preset.trials - done} trial(s) of "
            f"{steps} steps ({done} done)")
        study.optimize(objective, n_trials=preset.trials - done)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    best = min(complete, key=lambda t: t.value)
    return {"best_params": best.params, "best_value": best.value,
            "trials": [{"number": t.number, "value": t.value, "params": t.params}
                       for t in complete],
            "cpu_seconds_this_call": time.process_time() - cpu}


def final_run_dir(root: Path, dataset: str, field: str, seed: int) -> Path:
    return root / "final" / dataset / field / f"seed{seed}"


def train_final(root: Path, preset: Preset, dataset: str, spec: FieldSpec, params: dict,
                seed: int) -> tuple[Path, dict]:
    """The best setting retrained with ``seed`` for ``preset.steps(dataset)[1]`` steps."""
    run_dir = final_run_dir(root, dataset, spec.name, seed)
    over = [*base_overrides(preset, dataset, spec, preset.steps(dataset)[1], seed),
            *param_overrides(params)]
    log(f"final {dataset}/{spec.name}/seed{seed}")
    return run_dir, train(run_dir, over)
