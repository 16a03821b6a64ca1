"""Sweeps (issue 6) through ``train.py -m``: a two-job grid, ``hparams_search=optuna`` and its
study persisting in the sweep directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import run_script
from tests.training_runs import TINY, column, load_ckpt, read_csv


def final_metric(job_dir: Path, name: str = "val/sw") -> float:
    return column(read_csv(job_dir / "logs" / "metrics.csv"), name)[-1][1]


@pytest.mark.slow
def test_two_job_sweep_writes_two_complete_runs(tmp_path):
    sweep = tmp_path / "sweep"
    run_script("train.py", "-m", *TINY, "optim.lr=1e-3,2e-3", f"hydra.sweep.dir={sweep}")
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    from omegaconf import OmegaConf

    lrs = []
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").is_file()
        resolved = OmegaConf.load(job / "config_resolved.yaml")
        assert resolved.run_dir == str(job)
        lrs.append(resolved.optim.lr)
        assert load_ckpt(job)["global_step"] == 2
    assert lrs == [1e-3, 2e-3]
    a, b = (load_ckpt(job)["state_dict"] for job in jobs)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the learning rates mattered


@pytest.mark.slow
def test_optuna_search_runs_two_trials(tmp_path):
    """``hparams_search=optuna`` is a multirun by itself; with 2 trials it trains twice and
    reports the best primary metric that ``train.py`` returned (``val/sw`` here)."""
    from omegaconf import OmegaConf

    sweep = tmp_path / "optuna"
    run_script("train.py", "hparams_search=optuna", "hydra.sweeper.n_trials=2", *TINY,
               f"hydra.sweep.dir={sweep}")
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name.rsplit("_", 1)[1] for p in jobs] == ["0", "1"]
    assert all((job / "checkpoints" / "last.ckpt").is_file() for job in jobs)
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results.best_value == min(final_metric(job) for job in jobs)
    best = results.best_params
    assert 1e-4 <= best["optim.lr"] <= 1e-2
    assert best["lr_warmup_steps"] in (0, 100, 500)
    assert 1e4 <= best["callbacks.ema.half_life_images"] <= 1e6
    trial_lrs = [OmegaConf.load(job / "config_resolved.yaml").optim.lr for job in jobs]
    assert trial_lrs[0] != trial_lrs[1] and best["optim.lr"] in trial_lrs


@pytest.mark.slow
def test_optuna_study_persists_in_the_sweep_dir_and_resumes(tmp_path):
    """The study lives in ``<sweep dir>/optuna.db``; starting the search again in the same
    sweep dir continues the same study (2 + 1 trials), in new job directories."""
    import optuna

    sweep = tmp_path / "optuna"
    for n in (2, 1):
        run_script("train.py", "hparams_search=optuna", f"hydra.sweeper.n_trials={n}", *TINY,
                   f"hydra.sweep.dir={sweep}")
    assert (sweep / "optuna.db").is_file()
    study = optuna.load_study(study_name="unified_ode", storage=f"sqlite:///{sweep}/optuna.db")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3
    jobs = [p for p in sweep.iterdir() if p.is_dir()]
    assert len(jobs) == 3 and all((j / "checkpoints" / "last.ckpt").is_file() for j in jobs)
    assert sorted(t.value for t in done) == sorted(final_metric(j) for j in jobs)
