"""Sample-quality metrics for low-dimensional point sets (2-D toys).

* :func:`sliced_wasserstein`: the sliced 2-Wasserstein distance, averaged over random unit
  directions (fixed seed), from the empirical quantile functions of the projections.
* :func:`mmd_rbf`: the unbiased squared MMD with a sum of Gaussian kernels at several
  bandwidths (relative to the median pairwise distance of the reference set).

Both take ``(N, d)`` and ``(M, d)`` tensors and return a Python float; lower is better, and both
are ≈ 0 for two samples of the same law.
"""

from __future__ import annotations

import torch
from torch import Tensor

from unified_ode.physics.base import sq_dists


def _quantiles(x: Tensor, n: int) -> Tensor:
    """Empirical quantile function of each column of ``x`` ``(N, K)`` at ``n`` mid-points."""
    xs = torch.sort(x, dim=0).values
    if xs.shape[0] == n:
        return xs
    q = (torch.arange(n, dtype=x.dtype, device=x.device) + 0.5) / n
    return torch.quantile(xs, q, dim=0)


def sliced_wasserstein(a: Tensor, b: Tensor, n_projections: int = 256, seed: int = 0) -> float:
    """Sliced W2 distance between point sets ``a`` ``(N, d)`` and ``b`` ``(M, d)``."""
    a, b = a.detach().double().flatten(1), b.detach().double().flatten(1)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"dimension mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], n_projections, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    n = min(a.shape[0], b.shape[0])
    qa = _quantiles(a @ dirs, n)
    qb = _quantiles(b @ dirs, n)
    return float(((qa - qb) ** 2).mean().sqrt())


def mmd_rbf(a: Tensor, b: Tensor, scales=(0.1, 0.2, 0.5, 1.0, 2.0),
            max_points: int = 2000, block: int = 2048) -> float:
    """Unbiased squared MMD with Gaussian kernels of bandwidths ``scales × median distance``
    of ``b``. At most ``max_points`` of each set are used (the first ones); the median is that
    of the first 2,000 points of ``b`` (all of them when fewer). The kernel sums are
    accumulated over ``block × block`` tiles, so memory stays ``O(block²)`` whatever
    ``max_points`` (10,000 points: ~2·10⁸ kernel values per scale, seconds on one core)."""
    a = a.detach().double().flatten(1)[:max_points]
    b = b.detach().double().flatten(1)[:max_points]
    b0 = b[:2000]
    d0 = torch.cdist(b0, b0) ** 2
    med = d0[d0 > 0].median().sqrt()
    n, m = a.shape[0], b.shape[0]
    widths = [2 * float(s * med) ** 2 for s in scales]

    def kernel_sum(x: Tensor, y: Tensor, same: bool) -> float:
        """``sum_h sum_ij exp(−||x_i − y_j||²/h)`` over the tiles (minus the diagonal when
        ``x`` is ``y``)."""
        total = 0.0
        for i in range(0, len(x), block):
            xi = x[i:i + block]
            for j in range(0, len(y), block):
                dist = sq_dists(xi, y[j:j + block])
                for h in widths:
                    total += float(torch.exp(dist / -h).sum())
        return total - (len(widths) * len(x) if same else 0.0)

    return (kernel_sum(a, a, True) / (n * (n - 1)) + kernel_sum(b, b, True) / (m * (m - 1))
            - 2 * kernel_sum(a, b, False) / (n * m))
