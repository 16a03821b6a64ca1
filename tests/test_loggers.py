"""Loggers (issue 6): ``logger=many`` writes CSV, TensorBoard and an offline W&B run; W&B is
offline unless ``WANDB_MODE`` says otherwise.
"""

from __future__ import annotations

import pytest

from tests.conftest import compose_plain, run_script
from tests.training_runs import TINY, column, read_csv


@pytest.mark.slow
def test_many_loggers_write_csv_tensorboard_and_an_offline_wandb_run(tmp_path, monkeypatch):
    """``logger=many`` = csv + tensorboard + wandb (``conf/logger/wandb.yaml``: offline unless
    WANDB_MODE says otherwise); the figure callback sends its figure to TensorBoard and W&B."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    overrides = [o for o in TINY if o != "~callbacks.figures"]
    run_script("train.py", "logger=many", *overrides, "callbacks.figures.n_points=64",
               f"hydra.run.dir={run_dir}")
    rows = read_csv(run_dir / "logs" / "metrics.csv")
    assert column(rows, "train/loss") and column(rows, "val/sw")

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "val/sw", "val/mmd", "prior/sw", "final/sw"} <= scalars
    assert not any("@" in tag or "nfe" in tag for tag in scalars)  # stable names
    assert "samples" in acc.Tags()["images"]
    assert [e.step for e in acc.Scalars("val/sw")] == [2]

    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    data = next(runs[0].glob("run-*.wandb")).read_bytes()
    for key in (b"train/loss", b"val/sw", b"optim", b"samples"):  # scalars, config, figure
        assert key in data
    assert (runs[0] / "files").is_dir()


def test_wandb_logger_config_is_offline_by_default(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = compose_plain("train", ["logger=wandb", "run_dir=/some/run"])
    assert list(cfg.logger) == ["wandb"]
    assert cfg.logger.wandb.mode == "offline" and cfg.logger.wandb.save_dir == "/some/run"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert compose_plain("train", ["logger=wandb"]).logger.wandb.mode == "online"
    cfg = compose_plain("train", ["logger=many"])
    assert sorted(cfg.logger) == ["csv", "tensorboard", "wandb"]
