"""Class-conditional generation and classifier-free guidance (issue 16): labels from the data
modules, the class embedding with label dropout, the exact conditional field as ground truth,
the guided flow (one doubled-batch network call per evaluation) and every error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.conftest import CONF, run_script
from unified_ode.app.build import build_module
from unified_ode.data import DigitsDataModule, FacesDataModule, Toy2DDataModule
from unified_ode.data.toy2d import toy_samples
from unified_ode.errors import UserError
from unified_ode.guidance import GuidedModel, check_request, guided_flow, requested_labels
from unified_ode.networks import MLP
from unified_ode.networks.labels import ClassEmbedding
from unified_ode.networks.precond import Preconditioned
from unified_ode.parametrisation import Denoiser, PFGMNormalisedField, Velocity
from unified_ode.physics import ExactPosterior, LinearField, PoissonField, VEField
from unified_ode.physics.conditional import ConditionalExactPosterior
from unified_ode.solvers import Heun

F64 = torch.float64


def config(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose("train", overrides=list(overrides))


def labelled_points(n=240, name="eight_gaussians"):
    x, y = toy_samples(name, n, 0, return_labels=True)
    return x.double(), y


# --- data ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,classes", [("eight_gaussians", 8), ("moons", 2),
                                          ("checkerboard", 8)])
def test_toy_labels_are_the_mode_moon_and_square(name, classes):
    x, y = toy_samples(name, 4000, 0, return_labels=True)
    assert y.dtype == torch.long and set(y.tolist()) == set(range(classes))
    assert torch.equal(x, toy_samples(name, 4000, 0))  # labels do not change the points
    centres = torch.stack([x[y == c].mean(0) for c in range(classes)])
    spread = torch.stack([(x[y == c] - centres[c]).norm(dim=1).max() for c in range(classes)])
    gaps = torch.cdist(centres, centres) + 1e9 * torch.eye(classes)
    if name != "moons":  # modes and squares are compact: each class is far from the others
        assert (spread < gaps.min(1).values).all()
    dm = Toy2DDataModule(name, n_train=256, batch_size=64, conditional=True)
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (64, 2) and yb.shape == (64,) and dm.num_classes == classes


@pytest.mark.parametrize("name", ["eight_gaussians", "moons", "checkerboard"])
def test_every_prefix_of_a_toy_draw_is_a_draw_of_the_whole_law(name):
    """Metrics take the first k points of a reference (MMD, precision/recall): a generator
    that emits its classes in blocks (moons did: the upper moon first) would make that prefix
    one class only. The class shares of the first 10 % match the whole draw's."""
    _, y = toy_samples(name, 10_000, 0, return_labels=True)
    classes = int(y.max()) + 1
    whole = torch.bincount(y, minlength=classes).double() / len(y)
    head = torch.bincount(y[:1000], minlength=classes).double() / 1000
    assert (head - whole).abs().max() < 0.05, (head, whole)


def test_digits_batches_carry_the_digit():
    dm = DigitsDataModule(batch_size=32, conditional=True)
    dm.setup()
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (32, 1, 8, 8) and yb.dtype == torch.long and dm.num_classes == 10
    assert dm.train_labels().shape[0] == dm.train_tensor().shape[0]
    from sklearn.datasets import load_digits

    d = load_digits()  # every (image, label) pair is one of scikit-learn's
    flat = torch.from_numpy(d.images.reshape(len(d.images), -1).astype(np.float32)) / 8 - 1
    idx = torch.cdist(dm.train_tensor()[:50].flatten(1), flat).argmin(1)
    assert torch.equal(torch.from_numpy(d.target[idx.numpy()]), dm.train_labels()[:50])
    plain = DigitsDataModule(batch_size=32)
    assert isinstance(next(iter(plain.train_dataloader())), torch.Tensor)


def test_conditional_data_without_labels_is_a_clear_error():
    with pytest.raises(UserError, match="swiss_roll.*has none.*checkerboard"):
        Toy2DDataModule("swiss_roll", conditional=True)
    with pytest.raises(UserError, match="FacesDataModule has none.*conditional=false"):
        FacesDataModule(conditional=True)


def test_image_folder_classes_are_sub_folders(tmp_path):
    from PIL import Image

    from unified_ode.data import ImageFolderDataModule

    for cls, value in (("cat", 10), ("dog", 200)):
        (tmp_path / cls).mkdir()
        for i in range(4):
            Image.fromarray(np.full((8, 8), value, np.uint8)).save(tmp_path / cls / f"{i}.png")
    dm = ImageFolderDataModule(str(tmp_path), size=8, channels=1, batch_size=8, hflip=False,
                               heldout_fraction=0.0, conditional=True)
    assert dm.num_classes == 2
    xb, yb = next(iter(dm.train_dataloader()))
    assert torch.equal(yb, (xb.flatten(1).mean(1) > 0).long())  # dog (bright) = class 1
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "loose.png")
    loose = ImageFolderDataModule(str(tmp_path), size=8, channels=1, conditional=True)
    with pytest.raises(UserError, match="lie directly in it"):
        loose.setup()


# --- networks ------------------------------------------------------------------------------
def test_label_dropout_drops_to_the_null_class_in_training_only():
    torch.manual_seed(0)
    emb = ClassEmbedding(3, 5, p_uncond=0.3)
    labels = torch.randint(0, 3, (20_000,))
    zero = emb(labels, 20_000).abs().sum(1) == 0
    assert abs(zero.float().mean().item() - 0.3) < 0.02
    emb.eval()
    out = emb(labels, 20_000)
    assert not (out.abs().sum(1) == 0).any()
    assert torch.equal(out, emb.map.weight.T[labels])
    assert (emb(torch.full((4,), -1), 4) == 0).all() and (emb(None, 4) == 0).all()
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        emb(torch.tensor([3]), 1)


def test_unconditional_networks_keep_their_state_dict_keys():
    from unified_ode.networks import UNet

    plain = MLP([2], width=16, depth=1)
    assert set(MLP([2], width=16, depth=1, num_classes=0).state_dict()) == set(
        plain.state_dict())
    cond = MLP([2], width=16, depth=1, num_classes=4)
    assert set(cond.state_dict()) - set(plain.state_dict()) == {"class_embed.map.weight"}
    unet = UNet((1, 8, 8), model_channels=8, channel_mult=(1, 2), num_blocks=1,
                attn_resolutions=(), num_classes=10)
    x, c = torch.randn(3, 1, 8, 8), torch.randn(3)
    unet.eval()
    assert unet(x, c, torch.tensor([0, 1, -1])).shape == x.shape
    with pytest.raises(ValueError, match="unconditional"):
        plain(torch.randn(2, 2), torch.randn(2), torch.tensor([0, 1]))


@pytest.mark.slow
def test_label_dropout_trains_the_null_class():
    """Two conditional MLPs trained alike on eight Gaussians, with and without label dropout:
    only the first learns the all-data denoiser for the null class (seconds)."""
    y, lab = toy_samples("eight_gaussians", 4096, 0, return_labels=True)
    field = VEField()

    def train(p_uncond):
        torch.manual_seed(0)
        model = Preconditioned(MLP([2], width=32, depth=1, num_classes=8, p_uncond=p_uncond),
                               Denoiser(field), sigma_data=1.0)
        from unified_ode.objectives import DenoiserObjective

        obj = DenoiserObjective()
        obj.bind(field)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(250):
            i = torch.randint(0, 4096, (128,), generator=g)
            loss = obj(model, field, y[i], labels=lab[i], generator=g)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        return model

    exact = ExactPosterior(field, y[:2048].double())
    x = torch.randn(512, 2) * 2.0
    t = torch.full((512,), 1.5)  # mid noise: the all-data denoiser is far from any class's
    truth = exact.posterior_mean(x.double(), t.double()).float()
    errors = {}
    for p in (0.0, 0.2):
        model = train(p)
        with torch.no_grad():
            null = model(x, t, labels=torch.full((512,), -1))
        errors[p] = (null - truth).pow(2).sum(1).mean().item()
    # measured (250 steps): {0.0: 1.50, 0.2: 0.13}
    assert errors[0.2] < 0.3 and errors[0.0] > 4 * errors[0.2], errors


# --- the exact conditional field -----------------------------------------------------------
@pytest.mark.parametrize("field", [VEField(), LinearField(), PoissonField()],
                         ids=["ve", "linear", "poisson"])
def test_conditional_exact_samples_land_on_points_of_the_requested_class(field):
    data, lab = labelled_points()
    model = ConditionalExactPosterior(field, data, lab, parametrisation=Denoiser(field))
    labels = torch.tensor([3] * 12 + [6] * 12)
    flow = guided_flow(Denoiser(field), model, labels)
    x = field.sample_prior(24, (2,), generator=torch.Generator().manual_seed(1)).double()
    out = Heun(steps=40).solve(flow, x, Heun(steps=40).time_grid(field)).x
    nearest = torch.cdist(out, data).min(1)
    assert (nearest.values < 1e-2).all(), nearest.values.max()
    assert torch.equal(lab[nearest.indices], labels)


def test_guided_exact_field_with_w0_is_the_conditional_field():
    field = VEField()
    data, lab = labelled_points()
    param = Denoiser(field)
    model = ConditionalExactPosterior(field, data, lab, parametrisation=param)
    labels = torch.arange(8).repeat(4)
    x, t = torch.randn(32, 2, dtype=F64) * 3, torch.full((32,), 0.8, dtype=F64)
    cond = ExactPosterior(field, data[lab == 5], parametrisation=param)(x[5:6], t[5:6])
    assert torch.equal(GuidedModel(model, param, labels, 0.0)(x, t), model(x, t, labels))
    assert torch.allclose(model(x, t, labels)[5:6], cond, rtol=0, atol=1e-12)
    w = 2.5
    guided = GuidedModel(model, param, labels, w)(x, t)
    everyone = ExactPosterior(field, data, parametrisation=param)(x, t)
    assert torch.allclose(guided, (1 + w) * model(x, t, labels) - w * everyone, atol=1e-12)
    # outside the guidance interval: the conditional field again
    late = GuidedModel(model, param, labels, w, interval=(1.0, 5.0))(x, t)
    assert torch.equal(late, model(x, t, labels))


def test_guidance_of_the_normalised_pfgm_field_combines_denoisers():
    field = PoissonField()
    data, lab = labelled_points()
    param = PFGMNormalisedField(field, gamma=5.0)
    model = ConditionalExactPosterior(field, data, lab, parametrisation=param)
    labels = torch.full((6,), 2)
    x, t = torch.randn(6, 2, dtype=F64) * 5, torch.full((6,), 3.0, dtype=F64)
    guided = GuidedModel(model, param, labels, 1.0)(x, t)
    d_c = model.classes[2].posterior_mean(x, t)
    d_u = model.all.posterior_mean(x, t)
    assert torch.allclose(param.to_denoiser(x, t, guided), 2 * d_c - d_u, atol=1e-8)


class Counting(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.batches = model, []

    def forward(self, x, t, labels=None):
        self.batches.append(x.shape[0])
        return self.model(x, t, labels)

    @property
    def num_classes(self):
        return self.model.num_classes

    supports_guidance = True


def test_nfe_counts_network_calls_on_the_doubled_batch():
    field = VEField()
    data, lab = labelled_points()
    param = Velocity(field)
    counting = Counting(ConditionalExactPosterior(field, data, lab, parametrisation=param))
    x = field.sample_prior(10, (2,), generator=torch.Generator().manual_seed(0)).double()
    solver = Heun(steps=5)
    times = solver.time_grid(field)
    labels = torch.full((10,), 1)
    result = solver.solve(guided_flow(param, counting, labels, 1.0), x, times)
    assert result.nfe == len(counting.batches) == 9  # Heun: 2 per step, last step Euler
    assert set(counting.batches) == {20}  # every call: one network call on [x; x]
    counting.batches.clear()
    t_mid = float(times[2])
    result = solver.solve(guided_flow(param, counting, labels, 1.0, (0.0, t_mid)), x, times)
    assert result.nfe == len(counting.batches) == 9
    assert 10 in counting.batches and 20 in counting.batches  # guided on [0, t_mid] only


# --- errors --------------------------------------------------------------------------------
def test_every_request_error_names_the_value_and_what_is_allowed():
    field = VEField()
    data, lab = labelled_points()
    exact = ConditionalExactPosterior(field, data, lab)
    with pytest.raises(UserError, match=r"label 8 is outside \[0, 8\)"):
        check_request(exact, torch.tensor([1, 8]))
    with pytest.raises(UserError, match=r"label -1 is outside"):
        check_request(exact, torch.tensor([-1]))
    plain = Preconditioned(MLP([2], width=8, depth=1), Denoiser(field))
    with pytest.raises(UserError, match="model is unconditional"):
        check_request(plain, torch.tensor([0]))
    no_dropout = Preconditioned(MLP([2], width=8, depth=1, num_classes=8, p_uncond=0.0),
                                Denoiser(field))
    check_request(no_dropout, torch.tensor([0]))  # conditional sampling is fine
    with pytest.raises(UserError, match=r"trained without label dropout.*p_uncond"):
        check_request(no_dropout, torch.tensor([0]), guidance=1.0)
    with pytest.raises(UserError, match="guidance=1.0 needs labels"):
        check_request(exact, None, guidance=1.0)
    with pytest.raises(UserError, match="guidance must be a weight >= 0"):
        check_request(exact, torch.tensor([0]), guidance=-1.0)
    with pytest.raises(UserError, match="either labels"):
        requested_labels([1], 2, 4)
    assert requested_labels(None, 3, 4).tolist() == [3, 3, 3, 3]
    assert requested_labels([3, 3, 7], None, 99).tolist() == [3, 3, 7]


def test_conditional_exact_sampling_through_the_module():
    cfg = config("network=exact", "dataset=toy2d", "dataset.name=moons", "dataset.n_train=300",
                 "dataset.conditional=true", "physics=ve", "solver=heun", "solver.steps=20")
    module, dm = build_module(cfg)
    assert isinstance(module.model, ConditionalExactPosterior) and module.model.num_classes == 2
    labels = torch.tensor([0, 1, 1, 0])
    out = module.sample(4, labels=labels, guidance=0.5,
                        generator=torch.Generator().manual_seed(0)).x
    nearest = torch.cdist(out.double(), dm.train_tensor().double()).argmin(1)
    assert torch.equal(dm.train_labels()[nearest], labels)
    with pytest.raises(UserError, match=r"label 2 is outside \[0, 2\)"):
        module.sample(1, labels=torch.tensor([2]))


@pytest.mark.slow
def test_train_and_sample_a_conditional_run(tmp_path):
    """train.py with dataset.conditional=true (conditional U-Net, the metrics callback samples
    its null class), then sample.py labels=/guidance=, and a clear error before sampling for
    a label outside the classes."""
    run = tmp_path / "run"
    run_script("train.py", "experiment=digits_ve", "dataset.conditional=true",
               "trainer.max_steps=2", "dataset.batch_size=16", "network.model_channels=8",
               "network.num_blocks=1", "solver.steps=2", "callbacks.metrics.extractor=random",
               "callbacks.metrics.n_samples=16", "callbacks.metrics.batch_size=16",
               "callbacks.metrics.n_reference=300",
               "trainer.val_check_interval=1000", "callbacks.figures.n_images=4",
               f"hydra.run.dir={run}")
    import csv

    with open(run / "logs" / "metrics.csv") as f:  # per-class image metrics
        scored = [r for r in csv.DictReader(f) if r.get("val/fid")]
    assert len(scored) == 1 and 0 <= float(scored[0]["val/label_accuracy"]) <= 1
    # 16 class-balanced samples: 2 of classes 0-5, 1 of 6-9 (too few for a FID: left out)
    assert all(np.isfinite(float(scored[0][f"val/{m}_class/{c}"]))
               for m in ("fid", "kid") for c in range(6))
    assert not any(scored[0].get(f"val/fid_class/{c}") for c in range(6, 10))
    out = tmp_path / "s"
    run_script("sample.py", f"run={run}", "labels=[3,3,7]", "guidance=1.0", "solver.steps=3",
               f"out_dir={out}")
    got = np.load(out / "samples.npz")
    assert got["samples"].shape == (3, 8, 8, 1) and got["labels"].tolist() == [3, 3, 7]
    proc = run_script("sample.py", f"run={run}", "class=10", "n=4", f"out_dir={tmp_path / 'e'}",
                      check=False)
    assert proc.returncode == 2 and "label 10 is outside [0, 10)" in proc.stderr
    assert not (tmp_path / "e" / "samples.npz").exists()


# --- metrics -------------------------------------------------------------------------------
def test_per_class_metrics_tell_classes_apart():
    from unified_ode.metrics.conditional import (
        ClassifierFeatures,
        per_class_image_scores,
        per_class_sliced_wasserstein,
    )

    x, y = toy_samples("eight_gaussians", 2000, 0, return_labels=True)
    xh, yh = toy_samples("eight_gaussians", 2000, 1, return_labels=True)
    right = per_class_sliced_wasserstein(x, y, xh, yh)
    wrong = per_class_sliced_wasserstein(x, (y + 1) % 8, xh, yh)  # every class mislabelled
    assert right["overall"] == wrong["overall"]  # the overall sw ignores labels
    assert max(right[c] for c in range(8)) < 0.1 < min(wrong[c] for c in range(8))
    dm = DigitsDataModule(conditional=True)
    dm.setup()
    clf = ClassifierFeatures(dm.train_tensor(), dm.train_labels(), max_iter=200)
    held, held_y = dm.heldout(), dm.heldout_labels()
    assert clf.accuracy(held, held_y) > 0.9
    scores = per_class_image_scores(clf, dm.train_tensor(), dm.train_labels(), held, held_y,
                                    kid_subset_size=10)
    shuffled = per_class_image_scores(clf, dm.train_tensor(), dm.train_labels(), held,
                                      (held_y + 1) % 10, kid_subset_size=10)
    assert scores["overall"]["fid"] == pytest.approx(shuffled["overall"]["fid"])
    per, bad = [scores[c]["fid"] for c in range(10)], [shuffled[c]["fid"] for c in range(10)]
    assert np.mean(per) * 3 < np.mean(bad), (per, bad)
