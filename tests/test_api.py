"""The Python API (docs/api.md): its examples run as written on a real trained run, and
``run.sample`` reproduces ``sample.py`` bit for bit."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, run_script

API_DOC = ROOT / "docs" / "api.md"
DOC_RUN = "outputs/2026-11-29/12-00-00"  # the placeholder path in docs/api.md
TINY = ["trainer.max_steps=30", "dataset.n_train=1024", "dataset.n_heldout=256",
        "dataset.batch_size=128", "network.width=32", "network.depth=1", "solver.steps=4",
        "callbacks.metrics.n_samples=128", "trainer.val_check_interval=1000",
        "callbacks.figures.n_points=128", "callbacks.checkpoint.every_n_train_steps=0"]


def doc_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", API_DOC.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("api_run")
    run_script("train.py", *TINY, "physics=ve", f"hydra.run.dir={run_dir}")
    return run_dir


def test_import_is_cheap_and_names_resolve_lazily():
    code = ("import sys, unified_ode; assert 'torch' not in sys.modules, 'torch imported'; "
            "f = unified_ode.sample; assert callable(f) and 'torch' in sys.modules; "
            "assert {'load_run', 'Run', 'physics', 'solvers'} <= set(dir(unified_ode)); "
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


def test_plain_python_example_runs_and_matches_its_comment(capsys):
    blocks = doc_blocks()
    assert len(blocks) == 2, "docs/api.md should hold the run example and the plain one"
    exec(compile(blocks[1], "docs/api.md[plain]", "exec"), {})
    assert "torch.Size([1000, 2]) NFE 35" in capsys.readouterr().out


@pytest.mark.slow
def test_run_example_runs_on_a_trained_run(tiny_run, capsys):
    code = doc_blocks()[0]
    assert DOC_RUN in code
    exec(compile(code.replace(DOC_RUN, str(tiny_run)), "docs/api.md[run]", "exec"), {})
    out = capsys.readouterr().out
    assert "torch.Size([1000, 2]) NFE 35" in out  # Heun, 18 steps
    assert re.search(r"bits/dim -?\d+\.\d+ NFE \d+", out)
    from omegaconf import OmegaConf

    default_lr = OmegaConf.load(ROOT / "conf" / "train.yaml").optim.lr
    assert f"ve {default_lr} torch.Size([4, 2])" in out  # field name, the default lr, D(x, t)


@pytest.mark.slow
def test_run_sample_is_what_sample_py_writes(tiny_run, tmp_path):
    import unified_ode

    out = tmp_path / "s"
    run_script("sample.py", f"run={tiny_run}", "solver=euler", "solver.steps=7", "n=150",
               "batch_size=100", "seed=3", f"out_dir={out}")
    written = np.load(out / "samples.npz")
    run = unified_ode.load_run(tiny_run)
    assert run.ema and run.checkpoint == tiny_run / "checkpoints" / "last.ckpt"
    result = run.sample(150, solver="euler", steps=7, seed=3, batch_size=100, progress=False)
    assert result.nfe == 14 == int(written["nfe"].sum())  # two batches of Euler, 7 steps
    np.testing.assert_array_equal(result.x.numpy(), written["samples"])
    # raw weights differ from the EMA weights, and the run's own solver is Heun, 4 steps
    raw = unified_ode.load_run(tiny_run, ema=False)
    assert not raw.ema
    assert not torch.equal(raw.sample(50, solver="euler", steps=7, seed=3, progress=False).x,
                           result.x[:50])
    assert run.sample(20, seed=0, progress=False).nfe == 7  # 2·4 − 1


@pytest.mark.slow
def test_api_errors_say_what_to_do(tiny_run, tmp_path):
    import unified_ode
    from unified_ode.errors import UserError

    with pytest.raises(UserError, match="does not exist"):
        unified_ode.load_run(tmp_path / "nowhere")
    run = unified_ode.load_run(tiny_run)
    with pytest.raises(UserError, match="unknown solver 'hen'; choose one of .*heun"):
        run.sample(10, solver="hen")
    with pytest.raises(UserError, match="has no option 'step'; its options are steps"):
        run.sample(10, solver="heun", step=3)
    with pytest.raises(UserError, match=r"x has shape \(3, 5\); this run's data are \(B, 2\)"):
        run.log_likelihood(torch.zeros(3, 5))


def test_module_setattr_fast_path_stores_exactly_what_nn_module_stores():
    """GenerativeODE's plain-value fast path (Lightning's per-hook name bookkeeping) leaves
    every attribute where nn.Module.__setattr__ puts it and raises where it raises."""
    from unified_ode.lit.module import GenerativeODE
    from unified_ode.networks import MLP
    from unified_ode.physics import VEField
    from unified_ode.solvers import Euler

    def fresh(cls):
        torch.manual_seed(0)
        return cls(VEField(), MLP((2,), width=8, depth=1, time_embed_dim=8), None, Euler(steps=2),
                   (2,))

    class Reference(GenerativeODE):  # the same module with nn.Module's own __setattr__
        __setattr__ = torch.nn.Module.__setattr__

    assignments = [("note", "a"), ("note", None), ("note", 3), ("flag", True),
                   ("compile", False), ("lr_warmup_steps", 7), ("extra", torch.zeros(2)),
                   ("head", torch.nn.Linear(2, 2)), ("scale", torch.nn.Parameter(torch.ones(1))),
                   ("scale", None), ("model", "not a module"), ("head", 1.5),
                   ("automatic_optimization", False)]

    def outcome(module, name, value):
        try:
            setattr(module, name, value)
        except Exception as err:  # noqa: BLE001 - the type is what is compared
            return type(err).__name__
        where = [k for k in ("_parameters", "_buffers", "_modules") if name in getattr(module, k)]
        return where, name in module.__dict__, repr(getattr(module, name))[:40]

    ours, ref = fresh(GenerativeODE), fresh(Reference)
    for name, value in assignments:
        assert outcome(ours, name, value) == outcome(ref, name, value), name
    assert ours.automatic_optimization is False and ours.note == 3
    assert "model" in ours._modules and isinstance(ours.head, torch.nn.Linear)
