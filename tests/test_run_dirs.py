"""Run-directory claims (issue 14): distinct time-stamped directories for concurrent runs, a
lock on an explicit directory until its holder dies, sweeps started together, unused
directories discarded, the log rows a resume writes again trimmed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_script
from unified_ode.errors import UserError


def _claim_new(base: str, queue) -> None:
    from unified_ode.app.claims import claim_new_dir

    queue.put(str(claim_new_dir(base)))


def test_concurrent_claims_of_one_name_get_distinct_directories(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    base = str(tmp_path / "2026-01-01" / "12-00-00")
    procs = [ctx.Process(target=_claim_new, args=(base, queue)) for _ in range(6)]
    for p in procs:
        p.start()
    got = sorted(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert len(set(got)) == 6 and base in got
    assert sorted(str(p) for p in (tmp_path / "2026-01-01").iterdir()) == got


HOLD = ("import sys, time; from unified_ode.app.claims import claim_run_dir; "
        "claim_run_dir(sys.argv[1]); print('held', flush=True); time.sleep(600)")


def test_a_claimed_directory_is_refused_until_its_holder_dies(tmp_path):
    """A live holder (any process) keeps a second claimant out, with its pid in the message;
    after ``kill -9`` of the holder the directory can be claimed again (no stale lock)."""
    from unified_ode.app.claims import claim_run_dir, release_run_dir

    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"in use by process {holder.pid}"):
            claim_run_dir(run)
        proc = run_script("train.py", "trainer.max_steps=2", f"hydra.run.dir={run}",
                          check=False, cwd=tmp_path)
        assert proc.returncode == 2 and f"in use by process {holder.pid}" in proc.stderr
        assert sorted(p.name for p in run.iterdir()) == [".run.lock"]  # Hydra wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    claim_run_dir(run)
    claim_run_dir(run)  # re-entrant in one process
    release_run_dir(run)
    release_run_dir(run)


SWEEP_TINY = ["trainer.max_steps=4", "dataset.n_train=256", "dataset.batch_size=64",
              "network.width=16", "network.depth=1", "~callbacks.metrics", "~callbacks.best",
              "~callbacks.figures", "~callbacks.progress", "trainer.enable_model_summary=false",
              "trainer.log_every_n_steps=1", "callbacks.checkpoint.every_n_train_steps=2"]


def _start(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_sweeps_started_together_never_share_a_directory(tmp_path):
    """Two ``train.py -m`` with the default (time-stamped) sweep directory, started at the same
    moment, each get their own directory (a suffix when the second is the same); two with the
    same explicit ``hydra.sweep.dir``: one runs, the other is refused (exit 2)."""
    from omegaconf import OmegaConf

    procs = [_start(tmp_path, "-m", *SWEEP_TINY, f"seed={a},{b}") for a, b in ((0, 1), (2, 3))]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outs]
    sweeps = sorted(tmp_path.glob("multirun/*/*"))
    assert len(sweeps) == 2, sweeps
    seeds = []
    for sweep in sweeps:
        for job in sorted(p for p in sweep.iterdir() if p.is_dir()):
            overrides = [str(o) for o in OmegaConf.load(job / ".hydra" / "overrides.yaml")]
            seeds += [o for o in overrides if o.startswith("seed=")]
            assert sorted(p.name for p in (job / "checkpoints").iterdir()) == ["last.ckpt"]
            with open(job / "logs" / "metrics.csv") as f:
                steps = [r.split(",") for r in f.read().splitlines()[1:]]
            assert len(steps) == 4, steps  # this job's 4 steps only
    assert sorted(seeds) == ["seed=0", "seed=1", "seed=2", "seed=3"]

    shared = tmp_path / "shared"
    procs = [_start(tmp_path, "-m", *SWEEP_TINY, "seed=0,1", f"hydra.sweep.dir={shared}")
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [o[1][-1500:] for o in outs]
    refused = next(o[1] for p, o in zip(procs, outs) if p.returncode == 2)
    assert "is in use by process" in refused and "Traceback" not in refused
    assert sorted(p.name for p in shared.iterdir()) == [".run.lock", "0", "1", "multirun.yaml"]


def test_unused_directories_are_discarded_and_used_ones_kept(tmp_path):
    from unified_ode.app.claims import discard_unused_run_dir

    fresh = tmp_path / "a" / "b" / "fresh"
    (fresh / ".hydra").mkdir(parents=True)
    (fresh / ".hydra" / "config.yaml").write_text("{}")
    (fresh / "train.log").write_text("")
    assert discard_unused_run_dir(fresh, empty_parents=2)
    assert not (tmp_path / "a").exists()
    used = tmp_path / "used"
    (used / "checkpoints").mkdir(parents=True)
    (used / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (used / "train.log").write_text("")
    assert not discard_unused_run_dir(used)
    assert (used / "checkpoints" / "last.ckpt").exists() and (used / "train.log").exists()


def test_resume_trims_the_log_rows_it_writes_again(tmp_path):
    """Resumed from a checkpoint at step 4: training rows from step 4 on and every later row go
    (they are logged again); the evaluation logged at step 4 before that checkpoint stays."""
    from unified_ode.app.runs import trim_log_for_resume

    log = tmp_path / "metrics.csv"
    rows = ["epoch,step,sw@64,train/loss"] + [f"0,{s},,0.{s}" for s in range(7)]
    rows.insert(5, ",4,0.25,")  # sw@64 after 4 steps (a callback's row: no epoch)
    rows.append(",6,0.5,")
    log.write_text("\n".join(rows) + "\n")
    assert trim_log_for_resume(log, 4) == 4
    kept = log.read_text().splitlines()
    assert kept == ["epoch,step,sw@64,train/loss"] + [f"0,{s},,0.{s}" for s in range(4)] + [
        ",4,0.25,"]
    assert trim_log_for_resume(log, 4) == 0
    assert trim_log_for_resume(log, -1) == 5 and log.read_text().strip() == kept[0]


def test_a_config_that_is_a_multirun_claims_a_sweep_directory(tmp_path, monkeypatch):
    from unified_ode.app.preflight import preflight
    from unified_ode.app.schema import validate_train

    monkeypatch.chdir(tmp_path)
    argv = preflight("train", ["train.py", "hparams_search=optuna"], validate_train)
    assert argv[-1].startswith("hydra.sweep.dir=multirun/")
    assert [p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*")] == ["multirun"] * 3
