"""DDP on the CPU (issue 6): ``trainer=ddp_cpu`` trains with 2 gloo processes and scores the
samples of all ranks, the same metric ``sample.py task=evaluate`` computes in one process.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CONF, run_script
from tests.training_runs import TINY, column, load_ckpt, read_csv


def evaluate_in_process(run_dir: Path, out_dir: Path, *overrides: str) -> dict:
    """What ``python sample.py task=evaluate run=<run_dir> ...`` computes."""
    from hydra import compose, initialize_config_dir

    from unified_ode.app.sample import register_resolvers, run_task

    register_resolvers()
    args = ["task=evaluate", f"run={run_dir}", *overrides]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="sample", overrides=args)
        return run_task(cfg, args, out_dir)


@pytest.mark.slow
def test_ddp_cpu_trains_and_scores_all_ranks_samples(tmp_path):
    """``trainer=ddp_cpu``: 2 gloo processes. 96 metric samples in chunks of 32: rank 0
    generates chunks 0 and 2 (64), rank 1 chunk 1 (32); the logged metric covers all 96, and
    equals what ``sample.py task=evaluate`` computes in one process from the checkpoint's EMA
    weights with the same noise (seed, n, batch size)."""
    run_dir = tmp_path / "ddp"
    overrides = [o for o in TINY if not o.startswith(("callbacks.metrics.", "trainer.max_steps",
                                                      "dataset.batch_size"))]
    proc = run_script("train.py", "trainer=ddp_cpu", *overrides, "trainer.max_steps=3",
                      "dataset.batch_size=32", "callbacks.metrics.n_samples=96",
                      "callbacks.metrics.batch_size=32",
                      f"hydra.run.dir={run_dir}")
    out = proc.stdout + proc.stderr
    assert "distributed_backend=gloo" in out and "Starting with 2 processes" in out
    assert "(96 samples" in out
    assert out.count("trained 3 steps") == 1  # rank 0 only
    ckpt = load_ckpt(run_dir)
    assert ckpt["global_step"] == 3
    # the EMA counts the images of both ranks: 3 steps x 32 per rank x 2 ranks
    assert ckpt["callbacks"]["EMA"]["num_images"] == 3 * 32 * 2
    rows = read_csv(run_dir / "logs" / "metrics.csv")
    from omegaconf import OmegaConf

    hparams = OmegaConf.load(run_dir / "logs" / "hparams.yaml")
    assert hparams["eval/n_samples"] == 96  # a constant of the run, not a time series
    assert [s for s, _ in column(rows, "train/loss")] == [0, 1, 2]
    (step, sw), = column(rows, "val/sw")
    (_, mmd), = column(rows, "val/mmd")
    assert step == 3

    result = evaluate_in_process(run_dir, tmp_path / "eval", "n=96", "batch_size=32",
                                 "seed=1234")
    assert result["ema"] is True
    metrics = result["metrics"]
    assert metrics["eval/n_samples"] == 96
    assert metrics["sw@96"] == pytest.approx(sw, rel=1e-6, abs=0)
    assert metrics["mmd@96"] == pytest.approx(mmd, rel=1e-6, abs=0)
