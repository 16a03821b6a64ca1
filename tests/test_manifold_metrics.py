"""Improved precision/recall (k-NN manifolds), the data-vs-data floor, and MMD by tiles
(issue 17)."""

import torch

from unified_ode.data.toy2d import toy_samples
from unified_ode.metrics import data_floor, mmd_rbf, precision_recall, sliced_wasserstein
from unified_ode.metrics.manifold import inside_manifold, knn_radii


def test_knn_radii_match_brute_force():
    x = torch.randn(300, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = torch.cdist(x, x)
    expected = d.sort(dim=1).values[:, 3]  # column 0 is the point itself
    torch.testing.assert_close(knn_radii(x, k=3, block=64), expected, rtol=1e-10, atol=1e-12)
    # a point exactly on a ball's boundary is inside
    assert bool(inside_manifold(x[:1] + torch.tensor([[expected[0].item(), 0, 0, 0, 0]],
                                                     dtype=torch.float64) * (1 - 1e-12),
                                x[:1], expected[:1]).all())


def test_identical_sets_one_far_sets_zero_same_law_near_one():
    a = toy_samples("eight_gaussians", 2000, 1)
    assert precision_recall(a, a) == {"precision": 1.0, "recall": 1.0}
    assert precision_recall(a, a + 50.0) == {"precision": 0.0, "recall": 0.0}
    b = toy_samples("eight_gaussians", 2000, 2)
    pr = precision_recall(a, b)
    assert pr["precision"] > 0.95 and pr["recall"] > 0.95, pr


def test_mode_dropping_costs_recall_not_precision():
    """Keep four of the eight Gaussians: every sample is realistic (precision ≈ 1) but half of
    the real modes are missed (recall ≈ 0.5)."""
    real = toy_samples("eight_gaussians", 2000, 1)
    fake = toy_samples("eight_gaussians", 4000, 2)
    angle = torch.atan2(fake[:, 1], fake[:, 0])
    fake = fake[(angle > 0)][:2000]  # the four upper modes (none sits on the axis)
    pr = precision_recall(real, fake)
    assert pr["precision"] > 0.95 and 0.4 < pr["recall"] < 0.6, pr


def test_floor_is_the_data_vs_data_measurement():
    a, b = toy_samples("moons", 2000, 3), toy_samples("moons", 2000, 4)
    metrics = {"sw": sliced_wasserstein, "mmd": lambda x, y: mmd_rbf(x, y, max_points=2000),
               "pr": precision_recall}
    floor = data_floor(metrics, a, b)
    assert floor["sw"] == sliced_wasserstein(a, b)
    assert floor["mmd"] == mmd_rbf(a, b, max_points=2000)
    pr = precision_recall(a, b)
    assert floor["pr/precision"] == pr["precision"] and floor["pr/recall"] == pr["recall"]
    assert 0 < floor["sw"] < 0.1 and abs(floor["mmd"]) < 1e-3


def test_mmd_tiles_do_not_change_the_value():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(700, 2, generator=g), torch.randn(900, 2, generator=g) * 1.2
    whole = mmd_rbf(a, b, block=4096)
    assert abs(mmd_rbf(a, b, block=97) - whole) < 1e-12
    assert whole > 10 * abs(mmd_rbf(a, torch.randn(900, 2, generator=g)))
