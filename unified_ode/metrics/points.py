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


class RBFMMD:
    """The unbiased squared MMD of samples against a fixed reference ``b`` ``(M, d)``: the
    bandwidths and the reference's own kernel sum are computed once, so scoring many sample
    sets against one reference (a study) costs two tile sweeps each, not three. See
    :func:`mmd_rbf` for the definition."""

    def __init__(self, b: Tensor, scales=(0.1, 0.2, 0.5, 1.0, 2.0), max_points: int = 2000,
                 block: int = 2048):
        self.max_points, self.block = int(max_points), int(block)
        self.b = b.detach().double().flatten(1)[:max_points]
        b0 = self.b[:2000]
        d0 = torch.cdist(b0, b0) ** 2
        med = d0[d0 > 0].median().sqrt()
        self.widths = [2 * float(s * med) ** 2 for s in scales]
        m = self.b.shape[0]
        self.bb = self._kernel_sum(self.b, self.b, True) / (m * (m - 1))

    def _kernel_sum(self, x: Tensor, y: Tensor, same: bool) -> float:
        """``sum_h sum_ij exp(−||x_i − y_j||²/h)`` over ``block × block`` tiles (minus the
        diagonal when ``x`` is ``y``)."""
        total = 0.0
        for i in range(0, len(x), self.block):
            xi = x[i:i + self.block]
            for j in range(0, len(y), self.block):
                dist = sq_dists(xi, y[j:j + self.block])
                for h in self.widths:
                    total += float(torch.exp(dist / -h).sum())
        return total - (len(self.widths) * len(x) if same else 0.0)

    def __call__(self, a: Tensor) -> float:
        a = a.detach().double().flatten(1)[:self.max_points]
        if a.shape[1] != self.b.shape[1]:
            raise ValueError(f"dimension mismatch: {tuple(a.shape)} vs {tuple(self.b.shape)}")
        n, m = a.shape[0], self.b.shape[0]
        return (self._kernel_sum(a, a, True) / (n * (n - 1)) + self.bb
                - 2 * self._kernel_sum(a, self.b, False) / (n * m))


def mmd_rbf(a: Tensor, b: Tensor, scales=(0.1, 0.2, 0.5, 1.0, 2.0),
            max_points: int = 2000, block: int = 2048) -> float:
    """Unbiased squared MMD with Gaussian kernels of bandwidths ``scales × median distance``
    of ``b``. At most ``max_points`` of each set are used (the first ones); the median is that
    of the first 2,000 points of ``b`` (all of them when fewer). The kernel sums are
    accumulated over ``block × block`` tiles, so memory stays ``O(block²)`` whatever
    ``max_points`` (10,000 points: ~3·10⁸ kernel values per scale, seconds on one core)."""
    return RBFMMD(b, scales, max_points, block)(a)
