"""Reliability (issue 14): bad input, run-directory claims, NaN guard, safe loading, kills.

Bad inputs and crafted files go through ``train.py`` / ``sample.py`` as a user would (exit
status 2, one message naming the key, no traceback, nothing left on disk). The fault-injection
runs (``kill -9`` at random moments, resume each time) are at the end (slow).
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from tests.conftest import CONF, ROOT, run_script
from unified_ode.errors import UserError

# ---------------------------------------------------------------------------------------------
# Bad command lines: exit 2, a message naming the key and what is allowed, nothing written
# ---------------------------------------------------------------------------------------------
TRAIN_BAD = [  # (override(s), words the message must contain)
    (["trainer.max_steps=abc"], ["trainer.max_steps='abc'", "integer"]),
    (["trainer.max_steps=0"], ["trainer.max_steps=0", ">= 1"]),
    (["trainer.max_steps=-1"], ["trainer.max_steps=-1", "never end"]),
    (["dataset.batch_size=0"], ["dataset.batch_size=0", ">= 1"]),
    (["optim.lr=-1"], ["optim.lr=-1", "> 0"]),
    (["optim.lr=abc"], ["optim.lr='abc'", "number"]),
    (["physics.t_min=80"], ["physics.t_min=80", "physics.t_max=80", "smaller"]),
    (["physics.t_min=100", "physics.t_max=1"], ["physics.t_min=100", "smaller"]),
    (["physics.t_min=-1"], ["physics.t_min=-1", "> 0"]),
    (["solver.steps=0"], ["solver.steps=0", ">= 1"]),
    (["callbacks.checkpoint.every_n_train_steps=-3"], ["every_n_train_steps=-3", ">= 0"]),
    (["resume=maybe"], ["resume='maybe'", "true or false"]),
    (["seed=1.5"], ["seed=1.5", "integer"]),
    (["foo=1"], ["unknown key 'foo'", "+foo=1"]),
    (["trainer.max_step=10"], ["unknown key 'trainer.max_step'", "+trainer.max_step=10"]),
    (["dataset.batch_size=[1,"], ["dataset.batch_size=[1,", "cannot parse"]),
    (["-m", "optim.lr=1e-3,-2"], ["optim.lr=-2", "> 0"]),  # every value of a sweep
    (["-m", "physics=ve,nope"], ["physics=nope", "no such option", "ve"]),
    (["resume=true"], ["resume=true", "does not exist"]),
    (["ckpt_path=/nonexistent/x.ckpt"], ["ckpt_path='/nonexistent/x.ckpt'", "does not exist"]),
]
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra") + [
    "hydra/launcher"]
SAMPLE_BAD = [
    (["n=0"], ["n=0", ">= 1"]),
    (["n=-5"], ["n=-5", ">= 1"]),
    (["batch_size=0"], ["batch_size=0", ">= 1"]),
    (["temperature=0"], ["temperature=0", "> 0"]),
    (["record_every=x"], ["record_every='x'", "integer"]),
    (["physics.t_min=81"], ["physics.t_min=81", "smaller"]),
    (["nn=3"], ["unknown key 'nn'"]),
    (["solver=nope"], ["solver=nope", "no such option", "heun"]),
]


def check_refused(script: str, args: list[str], words: list[str], cwd: Path) -> None:
    """``script args`` exits 2 with one message holding ``words``, and writes nothing."""
    run_dir = cwd / "explicit_run"
    extra = [] if any(a.startswith("hydra.") for a in args) else (
        [f"hydra.run.dir={run_dir}"] if script == "train.py" and "-m" not in args else [])
    proc = run_script(script, *args, *extra, cwd=cwd, check=False, timeout=120)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr
    message = proc.stderr.strip().splitlines()
    assert len(message) == 1 and message[0].startswith(f"{script}: error: "), proc.stderr
    for word in words:
        assert word in message[0], (word, message[0])
    assert list(cwd.iterdir()) == [], list(cwd.rglob("*"))  # no half-made directory


@pytest.mark.parametrize("args,words", TRAIN_BAD, ids=lambda x: "_".join(x)[:40]
                         if isinstance(x, list) and x and "=" in "".join(x) else None)
def test_train_bad_input_is_one_clear_error(args, words, tmp_path):
    check_refused("train.py", args, words, tmp_path)


@pytest.mark.parametrize("group", GROUPS)
def test_every_config_group_names_its_options(group, tmp_path):
    """An unknown option of any group names the group and lists its real options."""
    options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    words = [f"{group}=no_such_option", "no such option"] + options[:2]
    check_refused("train.py", [f"{group}=no_such_option"], words, tmp_path)


@pytest.mark.parametrize("args,words", SAMPLE_BAD, ids=lambda x: "_".join(x)[:40]
                         if isinstance(x, list) and x and "=" in "".join(x) else None)
def test_sample_bad_input_is_one_clear_error(args, words, tmp_path):
    check_refused("sample.py", [*args, "network=exact", "dataset.n_train=64"], words, tmp_path)


def test_schema_checks_composed_defaults_and_resolves_interpolations():
    """Every shipped default passes; interpolated values are checked after resolution."""
    from tests.conftest import compose_config
    from unified_ode.app.schema import validate_sample, validate_train

    assert validate_train(compose_config("train"))["optim.lr"] > 0
    assert validate_sample(compose_config("sample"))["n"] >= 1
    with pytest.raises(UserError, match=r"optim\.lr=-0\.5 is not allowed"):
        validate_train(compose_config("train", ["+neg=-0.5", "optim.lr=${neg}"]))
    for experiment in sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")):
        validate_train(compose_config("train", [f"experiment={experiment}"]))


# ---------------------------------------------------------------------------------------------
# Run-directory claims
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# Safe loading: crafted checkpoint, CIFAR-10 batch, run config
# ---------------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this runs ``os.system`` (what a crafted file would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_checkpoint_never_runs(tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": _Payload(marker)}, evil)
    from unified_ode.app.runs import read_checkpoint

    with pytest.raises(UserError, match="not a trusted checkpoint file") as err:
        read_checkpoint(evil)
    assert "weights_only" not in str(err.value)
    for script, args in (("sample.py", [f"ckpt_path={evil}", f"out_dir={tmp_path / 's'}"]),
                         ("train.py", ["trainer.max_steps=2", f"ckpt_path={evil}",
                                       f"hydra.run.dir={tmp_path / 'r'}"])):
        proc = run_script(script, *args, check=False, cwd=tmp_path)
        assert proc.returncode == 2 and "not a trusted checkpoint file" in proc.stderr
        assert "weights_only" not in proc.stderr + proc.stdout
        assert "Traceback" not in proc.stderr
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.ckpt"]  # nothing half-made


def test_damaged_checkpoint_is_a_clear_error(tmp_path):
    from unified_ode.app.runs import read_checkpoint

    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1000)}}, good)
    (tmp_path / "cut.ckpt").write_bytes(good.read_bytes()[:2000])
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    for name in ("cut.ckpt", "text.ckpt"):
        with pytest.raises(UserError, match="cannot read checkpoint"):
            read_checkpoint(tmp_path / name)
    assert read_checkpoint(good)["state_dict"]["w"].sum() == 1000


def test_cifar_batches_are_read_without_running_code(tmp_path):
    from tests.image_files import write_cifar10
    from unified_ode.data.torchvision_sets import CIFAR10DataModule, read_cifar_batch

    written = write_cifar10(tmp_path, per_batch=3)
    folder = tmp_path / "cifar-10-batches-py"
    images, labels = read_cifar_batch(folder / "test_batch")
    assert (images == written["test"]).all() and (labels == written["test_labels"]).all()
    marker = tmp_path / "PWNED"
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump({"data": _Payload(marker), "labels": [0]}, f, protocol=2)
    with pytest.raises(UserError, match=r"refers to posix\.system|refers to os\.system"):
        read_cifar_batch(folder / "data_batch_2")
    with pytest.raises(UserError, match="data_batch_2"):
        CIFAR10DataModule(root=str(tmp_path))._load()
    assert not marker.exists()


def test_run_config_naming_foreign_code_is_refused(tmp_path):
    """A run directory whose saved config says ``_target_: os.system`` is not instantiated."""
    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        "physics:\n  _target_: os.system\n  _args_: ['touch " + str(marker) + "']\n"
        "network: {_target_: unified_ode.networks.MLP}\ndataset: {}\nsolver: {}\n")
    proc = run_script("sample.py", f"run={run}", "n=4", check=False, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "physics._target_='os.system'" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()
    assert sorted(p.name for p in run.iterdir()) == [".hydra"]  # no samples/<stamp>/ left


# ---------------------------------------------------------------------------------------------
# NaN guard: a real Trainer, a module whose weights turn NaN at a known step
# ---------------------------------------------------------------------------------------------
class _Diverging(L.LightningModule):
    """A linear regression whose weights are set to NaN by the optimiser step ``bad_step``."""

    def __init__(self, bad_step: int):
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.bad_step = bad_step

    def training_step(self, batch, batch_idx):
        x = batch[0]
        loss = (self.lin(x) ** 2).mean()
        if self.global_step + 1 >= self.bad_step:
            loss = loss * float("nan")
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_nan_guard_stops_before_a_nan_checkpoint(tmp_path):
    from unified_ode.lit import AtomicCheckpointIO, NanGuard, RunCheckpoint
    from unified_ode.lit.guards import NonFiniteTraining

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(64, 4)),
                                       batch_size=4)
    ckpt = RunCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, every_n_train_steps=2)
    trainer = L.Trainer(max_steps=20, callbacks=[NanGuard(), ckpt], logger=False,
                        log_every_n_steps=10, enable_progress_bar=False,
                        enable_model_summary=False, plugins=[AtomicCheckpointIO()])
    with pytest.raises(NonFiniteTraining) as err:
        trainer.fit(_Diverging(bad_step=5), data)
    message = str(err.value)
    assert "training stopped at step 6" in message  # the first save after the NaN step 5
    assert "optim.lr" in message and str(tmp_path / "last.ckpt") in message
    assert "at step 4" in message
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_nan_guard_checks_the_loss_on_logged_steps(tmp_path):
    from unified_ode.lit import NanGuard
    from unified_ode.lit.guards import NonFiniteTraining

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(64, 4)),
                                       batch_size=4)
    trainer = L.Trainer(max_steps=20, callbacks=[NanGuard()], logger=False,
                        log_every_n_steps=3, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    with pytest.raises(NonFiniteTraining, match=r"step 6: the training loss is nan.*No "
                                                "checkpoint had been written yet"):
        trainer.fit(_Diverging(bad_step=5), data)


@pytest.mark.slow
def test_nan_loss_from_the_command_line(tmp_path):
    """``optim.lr=1e30``: exit 2, the one-paragraph message, no traceback."""
    start = time.time()
    proc = run_script("train.py", "optim.lr=1e30", "lr_warmup_steps=0",
                      "trainer.max_steps=50", "dataset.n_train=256", "dataset.batch_size=64",
                      "network.width=16", "network.depth=1", "~callbacks.metrics",
                      "~callbacks.best", "~callbacks.figures", "trainer.log_every_n_steps=1",
                      f"hydra.run.dir={tmp_path / 'run'}", check=False, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("train.py: error: training stopped at step ")
    assert "optim.lr" in message and time.time() - start < 300


# ---------------------------------------------------------------------------------------------
# Fault injection: kill -9 at random moments (also mid checkpoint write), resume each time
# ---------------------------------------------------------------------------------------------
K = 10  # checkpoint interval (steps)
KILL_MAX_STEPS = 600
KILLS = 10
KILL_TINY = ["dataset.n_train=256", "dataset.batch_size=64", "~callbacks.metrics",
             "~callbacks.best", "~callbacks.figures", "~callbacks.progress",
             "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1",
             f"callbacks.checkpoint.every_n_train_steps={K}",
             f"trainer.max_steps={KILL_MAX_STEPS}"]


def _ckpt_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def _logged_steps(run: Path) -> list[int]:
    import csv

    path = run / "logs" / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


def _kill_when(proc, run: Path, mode: str, rng, deadline: float) -> str:
    """Wait for the moment ``mode`` asks for, then ``kill -9``; returns what was hit."""
    ckpts, last = run / "checkpoints", run / "checkpoints" / "last.ckpt"
    stamp = last.stat().st_mtime_ns if last.exists() else 0
    if mode == "startup":
        time.sleep(rng.uniform(0.0, 4.0))
    while proc.poll() is None and time.time() < deadline and mode != "startup":
        if ckpts.is_dir() and any(".tmp" in p.name for p in ckpts.iterdir()):
            if mode == "write":
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return "write"
        now = last.stat().st_mtime_ns if last.exists() else 0
        if now != stamp and mode == "random":  # trained past a checkpoint in this start
            time.sleep(rng.uniform(0.0, 0.6))
            break
        time.sleep(0.002)
    if proc.poll() is not None:
        return "finished"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return mode if mode != "write" else "write-missed"


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """A run killed ``KILLS`` times (modes cycling: during a checkpoint write, at a random
    moment after a new checkpoint, during start-up) and resumed each time, then finished.
    Checked after each kill: ``last.ckpt`` reads, and at most one checkpoint interval of the
    steps known to have run (logged, flushed every step) is lost."""
    import random

    rng = random.Random(14)
    root = tmp_path_factory.mktemp("kills")
    run = root / "run"
    last = run / "checkpoints" / "last.ckpt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0"}
    hits, modes, lost = [], ["write", "random", "startup"], []
    for i in range(KILLS):
        resume = ["resume=true"] if last.exists() else []
        proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *KILL_TINY, *resume,
                                 f"hydra.run.dir={run}"], cwd=root, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        hit = _kill_when(proc, run, modes[i % 3], rng, time.time() + 120)
        err = proc.stderr.read()
        proc.stderr.close()
        assert hit != "finished", err[-2000:]
        hits.append(hit)
        if last.exists():
            resumed_from = _ckpt_step(last)  # never a corrupt last.ckpt
            seen = max(_logged_steps(run), default=-1) + 1  # steps known to have run
            lost.append(seen - resumed_from)
    final = run_script("train.py", *KILL_TINY, "resume=true", f"hydra.run.dir={run}", cwd=root,
                       timeout=600)
    print(f"kills: {hits}; logged steps lost per kill: {lost}")
    return {"run": run, "hits": hits, "lost": lost, "final": final}


@pytest.mark.slow
def test_kill_minus_nine_and_resume(killed_run):
    """>= 10 kills, at least one inside a checkpoint write; at most one checkpoint interval
    lost per kill; the run reaches max_steps; every checkpoint reads and is finite; each step
    is logged at most once."""
    run, hits = killed_run["run"], killed_run["hits"]
    assert len(hits) >= 10 and "write" in hits, hits
    assert all(n <= K for n in killed_run["lost"]), killed_run["lost"]
    assert _ckpt_step(run / "checkpoints" / "last.ckpt") == KILL_MAX_STEPS
    for ckpt in (run / "checkpoints").glob("*.ckpt"):
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    steps = _logged_steps(run)
    assert len(steps) == len(set(steps)), "a step was logged twice"
    assert max(steps) == KILL_MAX_STEPS - 1


@pytest.mark.slow
def test_kills_leave_no_temporaries_and_one_last_checkpoint(killed_run):
    """Stale *.ckpt.tmp<pid> of killed writers are removed at start (lit/checkpoint.py), and a
    run keeps exactly one last.ckpt."""
    names = sorted(p.name for p in (killed_run["run"] / "checkpoints").iterdir())
    assert names == ["last.ckpt"], names
