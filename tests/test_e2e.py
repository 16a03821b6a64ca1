"""End to end, as a user: train.py then sample.py as subprocesses, with tiny overrides."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from tests.conftest import run_script

TINY = ["trainer.max_steps=40", "dataset.n_train=2048", "dataset.batch_size=128",
        "network.width=32", "network.depth=1", "solver.steps=6",
        "callbacks.metrics.n_samples=256", "trainer.val_check_interval=20",
        "callbacks.checkpoint.every_n_train_steps=20"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    proc = run_script("train.py", *TINY, f"hydra.run.dir={run_dir}")
    return run_dir, proc


@pytest.mark.slow
def test_train_writes_a_complete_run_directory(trained_run):
    run_dir, proc = trained_run
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "config_resolved.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "samples.png").stat().st_size > 10_000
    rows = list(csv.DictReader(open(next(run_dir.rglob("metrics.csv")))))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    sws = [(int(r["step"]), float(r["val/sw"])) for r in rows if r.get("val/sw")]
    prior_sw = [float(r["prior/sw"]) for r in rows if r.get("prior/sw")]
    assert losses and all(np.isfinite(losses))
    assert [step for step, _ in sws] == [20, 40]
    assert prior_sw and sws[-1][1] < prior_sw[0]  # better than the prior samples
    assert not any("@" in key or key == "nfe" for key in rows[0])  # stable names only
    from omegaconf import OmegaConf

    hparams = OmegaConf.load(run_dir / "logs" / "hparams.yaml")
    assert hparams["eval/nfe"] == 11 and hparams["eval/n_samples"] == 256  # Heun, 6 steps
    assert OmegaConf.load(run_dir / "logs" / "summary.yaml")["final/sw"] == sws[-1][1]
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert "final samples" in proc.stdout
    # quiet: a step-based bar, no Lightning tips or summary tables, one closing line
    out = proc.stdout + proc.stderr
    assert "train:" in proc.stderr and "Epoch" not in out
    assert "litlogger" not in out and "FLOPs" not in out and "LeafSpec" not in out
    assert proc.stdout.count("trained 40 steps") == 1


@pytest.mark.slow
@pytest.mark.parametrize(("solver", "steps", "nfe"), [("euler", 20, 20), ("heun", 18, 35)])
def test_sample_reloads_the_run(trained_run, tmp_path, solver, steps, nfe):
    run_dir, _ = trained_run
    out = tmp_path / "s"
    proc = run_script("sample.py", f"run={run_dir}", f"solver={solver}",
                      f"solver.steps={steps}", "n=150", "batch_size=100", f"out_dir={out}")
    assert f"NFE: {nfe}" in proc.stdout
    assert "wall time" in proc.stdout
    data = np.load(out / "samples.npz")
    assert data["samples"].shape == (150, 2)
    assert np.isfinite(data["samples"]).all()
    assert list(data["nfe"]) == [nfe, nfe]  # two batches
    assert (out / "samples.png").is_file()
    # the run's checkpoint holds EMA weights (callbacks.ema), and sampling uses them
    import json

    assert json.loads((out / "sample_info.json").read_text())["weights"] == "ema"
    assert "EMA weights" in proc.stdout
    # the same output directory is never overwritten
    again = run_script("sample.py", f"run={run_dir}", "n=10", f"out_dir={out}", check=False)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr


@pytest.mark.slow
def test_sample_seed_makes_batches_reproducible(trained_run, tmp_path):
    run_dir, _ = trained_run
    a, b = tmp_path / "a", tmp_path / "b"
    run_script("sample.py", f"run={run_dir}", "n=60", "batch_size=30", f"out_dir={a}")
    run_script("sample.py", f"run={run_dir}", "n=30", "batch_size=30", f"out_dir={b}")
    first = np.load(a / "samples.npz")["samples"][:30]
    np.testing.assert_array_equal(first, np.load(b / "samples.npz")["samples"])


@pytest.mark.slow
def test_run_directory_is_never_overwritten(trained_run):
    run_dir, _ = trained_run
    proc = run_script("train.py", *TINY, f"hydra.run.dir={run_dir}", check=False)
    assert proc.returncode == 2
    assert "refusing to overwrite" in proc.stderr


@pytest.mark.slow
def test_sample_with_a_mismatched_network_is_a_clear_error(trained_run, tmp_path):
    run_dir, _ = trained_run
    proc = run_script("sample.py", f"run={run_dir}", "network.width=48", "n=10",
                      f"out_dir={tmp_path / 'x'}", check=False)
    assert proc.returncode == 2
    assert "does not match the requested network" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_run_and_checkpoint_are_clear_errors(tmp_path):
    proc = run_script("sample.py", f"run={tmp_path / 'nope'}", check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert not (tmp_path / "nope").exists()  # a mistyped run dir is not created
    proc = run_script("sample.py", f"ckpt_path={tmp_path / 'missing.ckpt'}",
                      f"out_dir={tmp_path / 'o'}", check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text("{}\n")
    proc = run_script("sample.py", f"run={tmp_path / 'run'}", check=False)
    assert proc.returncode == 2 and "not written by unified_ode" in proc.stderr


def test_unknown_dataset_key_is_a_clear_error(tmp_path):
    proc = run_script("train.py", "dataset.name=spirals", f"hydra.run.dir={tmp_path}",
                      check=False)
    assert proc.returncode == 2
    assert "unknown toy data set 'spirals'" in proc.stderr and "checkerboard" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_exact_field_samples_without_checkpoint(tmp_path):
    out = tmp_path / "exact"
    proc = run_script("sample.py", "network=exact", "physics=ve", "dataset.n_train=200",
                      "n=100", "solver.steps=10", f"out_dir={out}")
    assert "NFE: 19" in proc.stdout
    samples = np.load(out / "samples.npz")["samples"]
    from unified_ode.data import toy_samples

    data = toy_samples("checkerboard", 200, 0).numpy()
    dist = np.sqrt(((samples[:, None, :] - data[None]) ** 2).sum(-1)).min(1)
    assert dist.max() < 1e-2  # the exact VE field lands on the training points


@pytest.mark.slow
def test_run_without_checkpoint_is_a_clear_error(trained_run, tmp_path):
    import shutil

    run_dir, _ = trained_run
    shutil.copytree(run_dir / ".hydra", tmp_path / "copy" / ".hydra")
    proc = run_script("sample.py", f"run={tmp_path / 'copy'}", check=False)
    assert proc.returncode == 2
    assert "no checkpoint" in proc.stderr and "ckpt_path=" in proc.stderr
