"""Exact resume (issues 6 and 14): an interrupted run continued with ``resume=true`` or
``ckpt_path=`` ends bitwise like an uninterrupted one (weights, EMA, optimiser, log); the
guards; one ``last.ckpt`` whatever the checkpoint settings; ``best.ckpt`` and Lightning's own
``ModelCheckpoint`` on the sample metric.

The in-process comparisons run ``run_training`` (what ``train.py`` calls) to stay cheap; the
command-line one goes through ``train.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import compose_plain, run_script
from tests.training_runs import RESUME_TINY, N, column, load_ckpt, read_csv, restored_environment
from unified_ode.errors import UserError
from unified_ode.lit.ema import EMA_KEY


def train_in_process(run_dir: Path, *overrides: str) -> dict:
    from unified_ode.app.train import run_training

    cfg = compose_plain("train", RESUME_TINY + [f"run_dir={run_dir}", *overrides])
    with restored_environment():
        return run_training(cfg)


@pytest.fixture(scope="module")
def resumed_runs(tmp_path_factory):
    """``full``: 2N steps at once; ``resumed``: N steps, then ``resume=true`` to 2N in the
    same directory; ``from_ckpt``: a new directory started with ``ckpt_path=`` (the N-step
    checkpoint) to 2N."""
    root = tmp_path_factory.mktemp("resume")
    full, resumed, from_ckpt = root / "full", root / "resumed", root / "from_ckpt"
    train_in_process(full, f"trainer.max_steps={2 * N}")
    first = train_in_process(resumed, f"trainer.max_steps={N}")
    assert first["steps"] == N
    half = root / "half.ckpt"
    shutil.copyfile(resumed / "checkpoints" / "last.ckpt", half)
    second = train_in_process(resumed, f"trainer.max_steps={2 * N}", "resume=true")
    third = train_in_process(from_ckpt, f"trainer.max_steps={2 * N}", f"ckpt_path={half}")
    assert second["steps"] == third["steps"] == 2 * N
    return {"full": full, "resumed": resumed, "from_ckpt": from_ckpt, "half": half}


@pytest.mark.slow
def test_resume_of_a_finished_run_says_nothing_was_trained(resumed_runs, tmp_path, capsys):
    """A run whose checkpoint is already at ``max_steps``: no "trained 2N steps in 0.1 s" (it
    trained nothing), but what to do instead; the checkpoint keeps its step."""
    run = tmp_path / "finished"
    shutil.copytree(resumed_runs["full"], run)
    summary = train_in_process(run, f"trainer.max_steps={2 * N}", "resume=true")
    out = capsys.readouterr().out
    assert summary["steps"] == 2 * N
    assert f"already at step {2 * N}" in out and "nothing trained" in out
    assert f"trained {2 * N} steps" not in out
    assert load_ckpt(run)["global_step"] == 2 * N


@pytest.mark.slow
@pytest.mark.parametrize("how", ["resumed", "from_ckpt"])
def test_resume_continues_exactly_like_an_uninterrupted_run(resumed_runs, how):
    full, other = load_ckpt(resumed_runs["full"]), load_ckpt(resumed_runs[how])
    half = torch.load(resumed_runs["half"], map_location="cpu", weights_only=True)
    assert half["global_step"] == N
    assert full["global_step"] == other["global_step"] == 2 * N
    for key in ("state_dict", EMA_KEY):
        assert set(full[key]) == set(other[key])
        for name, value in full[key].items():
            assert torch.equal(value, other[key][name]), f"{key}[{name}] differs"
    # the first half really moved the weights, and the second half moved them further
    assert any(not torch.equal(half["state_dict"][k], v) for k, v in full["state_dict"].items())
    assert full["callbacks"]["EMA"] == other["callbacks"]["EMA"]
    assert other["callbacks"]["EMA"]["num_images"] == 2 * N * 64
    assert other["callbacks"]["EMA"]["num_updates"] == 2 * N
    for opt_a, opt_b in zip(full["optimizer_states"], other["optimizer_states"]):
        for pid, state in opt_a["state"].items():
            assert all(torch.equal(state[k], opt_b["state"][pid][k]) for k in state)
    assert full["lr_schedulers"] == other["lr_schedulers"]


@pytest.mark.slow
def test_resumed_log_continues_the_step_count(resumed_runs):
    """The resumed run's ``metrics.csv`` holds steps 0..2N-1 once each (the second part is
    appended), the same losses as the uninterrupted run, and sample metrics at N and 2N."""
    full = read_csv(resumed_runs["full"] / "logs" / "metrics.csv")
    resumed = read_csv(resumed_runs["resumed"] / "logs" / "metrics.csv")
    assert column(resumed, "train/loss") == column(full, "train/loss")
    assert [s for s, _ in column(resumed, "train/loss")] == list(range(2 * N))
    assert [s for s, _ in column(resumed, "val/sw")] == [N, 2 * N]
    assert column(resumed, "val/sw") == column(full, "val/sw")
    assert len(column(resumed, "prior/sw")) == 1  # the baseline only at step 0
    from_ckpt = read_csv(resumed_runs["from_ckpt"] / "logs" / "metrics.csv")
    assert [s for s, _ in column(from_ckpt, "train/loss")] == list(range(N, 2 * N))


@pytest.mark.slow
def test_resume_guards(resumed_runs, tmp_path):
    """No overwrite without ``resume=true``; a resume with a changed model config, or of a
    directory without a checkpoint, is refused; nothing is trained or written."""
    run = resumed_runs["resumed"]
    before = (run / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    with pytest.raises(UserError, match="refusing to overwrite"):
        train_in_process(run, f"trainer.max_steps={3 * N}")
    with pytest.raises(UserError, match="optim config differs"):
        train_in_process(run, f"trainer.max_steps={3 * N}", "resume=true", "optim.lr=1e-2")
    with pytest.raises(UserError, match="does not exist"):
        train_in_process(tmp_path / "empty", "resume=true")
    with pytest.raises(UserError, match="does not exist"):
        train_in_process(tmp_path / "new", f"ckpt_path={tmp_path / 'missing.ckpt'}")
    assert (run / "checkpoints" / "last.ckpt").stat().st_mtime_ns == before
    assert not (tmp_path / "empty").exists() and not (tmp_path / "new").exists()


@pytest.mark.slow
def test_load_from_checkpoint_rebuilds_the_run(resumed_runs):
    """``GenerativeODE.load_from_checkpoint(path)`` needs nothing but the file: the module is
    rebuilt from the config stored in it, with the EMA weights (default) or the raw ones."""
    from unified_ode.lit import GenerativeODE

    path = resumed_runs["full"] / "checkpoints" / "last.ckpt"
    ckpt = load_ckpt(resumed_runs["full"])
    ema, raw = GenerativeODE.load_from_checkpoint(path), \
        GenerativeODE.load_from_checkpoint(path, ema=False)
    assert all(torch.equal(ema.state_dict()[k], v) for k, v in ckpt[EMA_KEY].items())
    assert all(torch.equal(raw.state_dict()[k], v) for k, v in ckpt["state_dict"].items())
    assert not ema.training and ema.hparams["config"]["trainer"]["max_steps"] == 2 * N
    x = ema.sample(16, generator=torch.Generator().manual_seed(0)).x
    assert x.shape == (16, 2) and torch.isfinite(x).all()


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.slow
def test_one_last_ckpt_whatever_the_checkpoint_settings_on_resume(tmp_path):
    """Issue 14 items 1 and 4: resuming with other checkpoint settings keeps exactly one
    ``last.ckpt`` (no ``last-v1.ckpt``), always the newest; a stale ``*.ckpt.tmp<pid>`` of a
    dead writer is removed at start, a live process's is kept."""
    import subprocess
    import sys

    run = tmp_path / "run"
    train_in_process(run, "trainer.max_steps=3", "callbacks.checkpoint.every_n_train_steps=2")
    ckdir = run / "checkpoints"
    assert load_ckpt(run)["global_step"] == 3  # written at max_steps, not every 2 only
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    dead = ckdir / f"last.ckpt.tmp{_dead_pid()}"
    kept = ckdir / f"last.ckpt.tmp{live.pid}"
    dead.write_bytes(b"half a checkpoint")
    kept.write_bytes(b"being written")
    try:
        train_in_process(run, "trainer.max_steps=5", "resume=true",
                         "callbacks.checkpoint.every_n_train_steps=1", "callbacks.best.mode=max")
        assert not dead.exists() and kept.exists()
    finally:
        live.kill()
        live.wait()
    kept.unlink()
    assert load_ckpt(run)["global_step"] == 5
    train_in_process(run, "trainer.max_steps=7", "resume=true",
                     "callbacks.checkpoint.every_n_train_steps=4")
    assert sorted(p.name for p in ckdir.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert load_ckpt(run)["global_step"] == 7


@pytest.mark.slow
def test_lightning_model_checkpoint_monitors_the_sample_metric(tmp_path):
    """The sample metrics are logged in the validation loop, so Lightning's own
    ``ModelCheckpoint(monitor="val/sw")`` works unmodified, and agrees with ``best.ckpt``:
    both hold the step with the lowest ``val/sw`` in metrics.csv."""
    run = tmp_path / "run"
    plain = ("+callbacks.plain={_target_:lightning.pytorch.callbacks.ModelCheckpoint,"
             f"dirpath:'{tmp_path / 'plain'}',filename:top,monitor:'val/sw',mode:min,"
             "save_top_k:1}")
    train_in_process(run, "trainer.max_steps=6", "trainer.val_check_interval=2",
                     "callbacks.ema.half_life_images=50", plain)
    rows = read_csv(run / "logs" / "metrics.csv")
    sws = column(rows, "val/sw")
    assert [s for s, _ in sws] == [2, 4, 6]
    best_step = min(sws, key=lambda sv: sv[1])[0]
    for path in (tmp_path / "plain" / "top.ckpt", run / "checkpoints" / "best.ckpt"):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert ckpt["global_step"] == best_step, path


CLI_RESUME = ["dataset.n_train=256", "dataset.n_heldout=64", "dataset.batch_size=64",
              "network.width=16", "network.depth=1", "solver.steps=2",
              "callbacks.metrics.n_samples=64", "callbacks.metrics.batch_size=64",
              "trainer.val_check_interval=3", "callbacks.figures.n_points=64",
              "callbacks.ema.half_life_images=300", "callbacks.ema.rampup_ratio=1.0"]


@pytest.mark.slow
@pytest.mark.parametrize("services", ["on", "off"])
def test_command_line_resume_is_bitwise_across_an_epoch_boundary(tmp_path, services):
    """Issue 14 item 2, through ``train.py``: 8 steps at once vs 4 + ``resume=true`` to 8, with
    4 batches an epoch (the interruption is an epoch boundary) and ``last.ckpt`` written only
    at ``max_steps`` (every_n_train_steps=1000). With services on, sample metrics and figures
    run at steps 3, 6 and 8 in the straight run and also at step 4 in the interrupted one:
    evaluation must not touch the training RNG. Cause of the old failure: ``last.ckpt`` was
    written in ``on_train_end``, after the fit loop had stopped, and Lightning resumed that loop
    state as a half-finished epoch (a fresh shuffle for the remaining batches)."""
    off = ["~callbacks.metrics", "~callbacks.best", "~callbacks.figures"]
    args = CLI_RESUME + (off if services == "off" else [])
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_script("train.py", *args, "trainer.max_steps=8", f"hydra.run.dir={straight}")
    run_script("train.py", *args, "trainer.max_steps=4", f"hydra.run.dir={resumed}")
    assert load_ckpt(resumed)["global_step"] == 4
    run_script("train.py", *args, "trainer.max_steps=8", "resume=true",
               f"hydra.run.dir={resumed}")
    a, b = load_ckpt(straight), load_ckpt(resumed)
    assert a["global_step"] == b["global_step"] == 8
    for key in ("state_dict", EMA_KEY):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}[{name}] differs"
    for pid, state in a["optimizer_states"][0]["state"].items():
        assert all(torch.equal(v, b["optimizer_states"][0]["state"][pid][k])
                   for k, v in state.items())
