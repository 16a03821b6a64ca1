"""Safe loading (issue 14): a crafted checkpoint, CIFAR-10 batch or run config never runs
code; a damaged checkpoint is a clear error.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from tests.conftest import run_script
from unified_ode.errors import UserError


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
