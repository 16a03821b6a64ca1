"""The NaN guard (issue 14): a real Trainer, a module whose loss turns NaN at a known step;
and a diverging run from the command line (exit 2, one paragraph, no traceback).
"""

from __future__ import annotations

import time

import lightning as L
import pytest
import torch
from torch import nn

from tests.conftest import run_script


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
