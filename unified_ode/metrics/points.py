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
            max_points: int = 2000) -> float:
    """Unbiased squared MMD with Gaussian kernels of bandwidths ``scales × median distance``
    of ``b``. At most ``max_points`` of each set are used (the first ones)."""
    a = a.detach().double().flatten(1)[:max_points]
    b = b.detach().double().flatten(1)[:max_points]
    daa, dbb, dab = torch.cdist(a, a) ** 2, torch.cdist(b, b) ** 2, torch.cdist(a, b) ** 2
    med = dbb[dbb > 0].median().sqrt()
    n, m = a.shape[0], b.shape[0]
    total = 0.0
    for s in scales:
        h = 2 * (s * med) ** 2
        kaa, kbb, kab = torch.exp(-daa / h), torch.exp(-dbb / h), torch.exp(-dab / h)
        total += ((kaa.sum() - kaa.diagonal().sum()) / (n * (n - 1))
                  + (kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1))
                  - 2 * kab.mean())
    return float(total)
