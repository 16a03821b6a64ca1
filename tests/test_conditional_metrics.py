"""Class-conditional runs end to end (issue 16): per-class metrics from the scorer, the
metrics callback (real trainer) and ``sample.py task=evaluate``; every physics config trains
and samples conditionally, and its exact conditional field lands on the class's points; the
errors of a conditional request come before any sampling."""

from __future__ import annotations

import csv
import json

import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.conftest import CONF, run_script
from unified_ode.app.build import build_module
from unified_ode.data import DigitsDataModule
from unified_ode.errors import UserError
from unified_ode.lit.callbacks import stable_name
from unified_ode.metrics.conditional import per_class_image_scores
from unified_ode.metrics.scoring import SampleScorer

PHYSICS = ["poisson", "pfgmpp", "ve", "vp", "linear", "radial", "radial_general"]
TOY = ["dataset=toy2d", "dataset.name=eight_gaussians", "dataset.conditional=true"]


def config(name="train", *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=True)


def sample_in_process(out_dir, *overrides):
    """sample.py's code path without the subprocess (compose sample.yaml, run_task)."""
    from unified_ode.app.sample import register_resolvers, run_task

    register_resolvers()
    args = [f"out_dir={out_dir}", *overrides]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return run_task(compose("sample", overrides=args), args, out_dir)


def test_per_class_metric_names_are_stable():
    assert stable_name("fid_class/3@2k") == "val/fid_class/3"
    assert stable_name("label_accuracy@500") == "val/label_accuracy"
    assert stable_name("sw@2k") == "val/sw" and stable_name("eval/nonfinite") == "val/nonfinite"


def test_image_scorer_scores_each_class_and_the_label(tmp_path):
    """Real held-out digits scored as if generated: right labels give high accuracy and low
    per-class FIDs, the same images with every label shifted do not; the overall FID ignores
    labels; the per-class FIDs are those of the class's features."""
    dm = DigitsDataModule(conditional=True)
    dm.setup()
    scorer = SampleScorer(n_samples=180, batch_size=64, extractor="random", n_reference=600,
                          kid_subset_size=10, inception_score=False, classifier_max_train=800,
                          cache_dir=str(tmp_path))
    scorer.prepare(dm)
    held, y = dm.heldout(), dm.heldout_labels()
    right = scorer.score_samples(held, y)
    wrong = scorer.score_samples(held, (y + 1) % 10)
    assert right["fid@180"] == pytest.approx(wrong["fid@180"])
    assert right["label_accuracy@180"] > 0.85 > 0.2 > wrong["label_accuracy@180"]
    fids = [right[f"fid_class/{c}@180"] for c in range(10)]
    assert np.mean(fids) * 2 < np.mean([wrong[f"fid_class/{c}@180"] for c in range(10)])
    assert {f"kid_class/{c}@180" for c in range(10)} <= set(right)
    ext = scorer.image_metrics.extractor
    direct = per_class_image_scores(ext, scorer.reference_features, scorer.reference_labels,
                                    ext(held).double(), y, kid_subset_size=10, overall=False)
    assert fids == pytest.approx([direct[c]["fid"] for c in range(10)], rel=1e-6)
    with pytest.raises(ValueError, match="3 labels for 180 samples"):
        scorer.score_samples(held, y[:3])


def test_evaluate_the_exact_conditional_field(tmp_path):
    """task=evaluate on the exact conditional field: class-balanced guided samples, every one
    classified as its class, per-class sw small; metrics.json's per_class table and the
    labels in samples.npz. labels= with task=evaluate is an error before sampling."""
    common = ["task=evaluate", "network=exact", *TOY, "dataset.n_train=400", "physics=ve",
              "solver.steps=20", "n=80", "batch_size=40", "guidance=1.0"]
    info = sample_in_process(tmp_path / "ev", *common)
    m = info["metrics"]
    assert m["label_accuracy@80"] == 1.0 and info["num_classes"] == 8
    assert list(info["per_class"]) == [str(c) for c in range(8)]
    assert max(row["sw"] for row in info["per_class"].values()) < 0.2
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["per_class"] == info["per_class"] and saved["guidance"] == 1.0
    labels = np.load(tmp_path / "ev" / "samples.npz")["labels"]
    assert np.bincount(labels).tolist() == [10] * 8
    with pytest.raises(UserError, match="labels=/class= are options of task=sample"):
        sample_in_process(tmp_path / "bad", *common, "labels=[1,2]")
    assert not (tmp_path / "bad").exists()


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    """A tiny conditional toy run through train.py (label dropout off), metrics every 10
    steps: (run dir, metrics.csv rows)."""
    run = tmp_path_factory.mktemp("cond") / "run"
    run_script("train.py", *TOY, "dataset.n_train=1024", "dataset.batch_size=64",
               "network.width=16", "network.depth=1", "network.p_uncond=0", "solver.steps=3",
               "trainer.max_steps=20", "trainer.val_check_interval=10",
               "callbacks.metrics.n_samples=96", "callbacks.metrics.batch_size=48",
               "callbacks.figures.n_points=64", f"hydra.run.dir={run}")
    with open(run / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return run, rows


@pytest.mark.slow
def test_metrics_callback_logs_each_class(cond_run):
    _, rows = cond_run
    per_class = [f"val/sw_class/{c}" for c in range(8)]
    scored = [r for r in rows if r.get("val/sw")]
    assert [int(r["step"]) for r in scored] == [10, 20]
    for r in scored:
        assert all(np.isfinite(float(r[k])) for k in [*per_class, "val/label_accuracy"])
        assert 0 <= float(r["val/label_accuracy"]) <= 1
    assert rows[0]["prior/sw_class/0"]  # the prior's baseline, per class too


@pytest.mark.slow
def test_evaluate_a_trained_conditional_run_and_its_errors(cond_run, tmp_path):
    run, rows = cond_run
    info = sample_in_process(tmp_path / "ev", f"run={run}", "task=evaluate", "n=96",
                             "batch_size=48", "seed=1234")  # the callback's draws
    last = next(r for r in reversed(rows) if r.get("val/sw"))
    # the same fixed noise and labels as the callback's last evaluation (same weights)
    assert info["metrics"]["sw@96"] == pytest.approx(float(last["val/sw"]), rel=1e-5)
    assert info["per_class"]["3"]["sw"] == pytest.approx(float(last["val/sw_class/3"]),
                                                         rel=1e-5)
    no_dropout = r"trained without label dropout.*p_uncond"
    errors = [("sample", ["guidance=1.0", "class=3"], no_dropout),
              ("sample", ["class=8"], r"label 8 is outside \[0, 8\)"),
              ("evaluate", ["guidance=1.0"], no_dropout),
              ("evaluate", ["class=8"], "labels=/class= are options of task=sample")]
    for i, (task, args, message) in enumerate(errors):
        out = tmp_path / f"error{i}"
        with pytest.raises(UserError, match=message):
            sample_in_process(out, f"run={run}", f"task={task}", "n=8", *args)
        assert not out.exists()


def test_labels_on_an_unconditional_model_are_an_error_before_sampling(tmp_path):
    out = tmp_path / "s"
    with pytest.raises(UserError, match="model is unconditional"):
        sample_in_process(out, "network=exact", "dataset.n_train=64", "labels=[0]")
    with pytest.raises(UserError, match="guidance=2.0 needs labels"):
        sample_in_process(out, "network=exact", "dataset.n_train=64", "task=evaluate",
                          "guidance=2.0", "n=8")
    assert not out.exists()


def test_conditional_pfgm_normalised_is_refused_before_training():
    cfg = config("train", *TOY, "objective=pfgm_normalised")
    with pytest.raises(UserError, match="pfgm_normalised does not train class-conditional.*"
                                        "objective=denoiser"):
        build_module(cfg)
    exact, dm = build_module(config("train", *TOY, "objective=pfgm_normalised",
                                    "network=exact", "dataset.n_train=200"))
    x = exact.sample(8, labels=torch.full((8,), 5), generator=torch.Generator().manual_seed(0)).x
    nearest = torch.cdist(x.double(), dm.train_tensor().double()).argmin(1)
    assert (dm.train_labels()[nearest] == 5).all()


@pytest.mark.parametrize("physics", PHYSICS)
def test_every_field_trains_and_samples_conditionally(physics):
    """Each physics config with its default objective: a few real training steps move the
    class embedding (the labels reach the network), guided samples are finite; the exact
    conditional field's samples land on training points of the requested class."""
    torch.manual_seed(0)
    module, dm = build_module(config("train", *TOY, f"physics={physics}", "dataset.n_train=256",
                                     "dataset.batch_size=64", "network.width=16",
                                     "network.depth=1", "solver.steps=3"))
    before = module.model.net.class_embed.map.weight.detach().clone()
    L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
              limit_val_batches=0).fit(module, datamodule=dm)
    assert not torch.equal(before, module.model.net.class_embed.map.weight)
    labels = torch.arange(16) % 8
    out = module.sample(16, labels=labels, guidance=1.0,
                        generator=torch.Generator().manual_seed(0)).x
    assert out.shape == (16, 2) and torch.isfinite(out).all()

    exact, dm = build_module(config("train", *TOY, f"physics={physics}", "network=exact",
                                    "dataset.n_train=160", "solver.steps=40"))
    x = exact.sample(16, labels=labels, generator=torch.Generator().manual_seed(1)).x.double()
    data = dm.train_tensor().double()
    dist = torch.cdist(x, data).min(1)
    assert torch.equal(dm.train_labels()[dist.indices], labels)
    # on the points: closer to one than the data's nearest-neighbour spacing, typically far
    # closer (poisson's heavy-tailed kernel leaves a few samples ~0.6 spacings off, measured)
    spacing = (torch.cdist(data, data) + torch.eye(len(data)) * 1e9).min(1).values.median()
    assert (dist.values < spacing).all(), (dist.values.max(), spacing)
    assert dist.values.median() < spacing / 10, (dist.values.median(), spacing)
