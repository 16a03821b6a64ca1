"""The EMA of the weights (issue 6): the averaging rule recomputed by hand for every mode, its
weights in sampling and in the checkpoint, pickling (``ddp_spawn``), bad settings.
"""

from __future__ import annotations

import pickle

import lightning as L
import pytest
import torch
from torch import nn

from tests.conftest import compose_plain
from tests.training_runs import MODULE_TINY
from unified_ode.lit.ema import EMA, EMA_KEY


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
