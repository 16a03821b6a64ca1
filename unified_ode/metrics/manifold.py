"""Improved precision and recall of generated samples (Kynkäänniemi et al. 2019), and the
data-vs-data floor of any sample metric.

A set of feature vectors ``X`` ``(N, F)`` (2-D toy points, Inception features, anything)
estimates its manifold as the union of balls ``B(x_i, r_k(x_i))``, ``r_k`` the distance from
``x_i`` to its ``k``-th nearest neighbour in ``X`` (itself excluded). Then

* **precision** = the fraction of generated samples inside the real manifold (are the samples
  realistic?),
* **recall** = the fraction of real samples inside the generated manifold (is every mode
  covered? a field that drops a mode loses recall, not precision).

Both are in ``[0, 1]``; two draws of one law give values near 1 (how near depends on ``k`` and
``N``: that is what the floor measures), disjoint sets give 0. Distances come from matrix
products (:func:`unified_ode.physics.base.sq_dists`) over row blocks, so memory is
``O(block · N)``; 10,000 × 10,000 points take a few seconds on one core.

A metric's **floor** is its value between two independent draws of the true data of the same
size: a model cannot be told apart from the data by a difference smaller than that.
:func:`data_floor` computes it with the very functions used for the samples.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from unified_ode.physics.base import sq_dists


def _features(x: Tensor) -> Tensor:
    x = x.detach().flatten(1).double()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("precision/recall: the feature vectors contain NaN or inf; drop the "
                         "non-finite samples first (and report how many there were)")
    return x


def knn_radii(x: Tensor, k: int = 3, block: int = 1024) -> Tensor:
    """Distance ``(N,)`` from each row of ``x`` ``(N, F)`` to its ``k``-th nearest other row."""
    x = _features(x)
    if not 1 <= k < len(x):
        raise ValueError(f"k-NN radii need 1 <= k < N, got k={k} for N={len(x)} points")
    out = torch.empty(len(x), dtype=torch.float64)
    for i in range(0, len(x), block):
        d = sq_dists(x[i:i + block], x)
        # the point itself is at distance 0: the (k+1)-th smallest is the k-th neighbour
        out[i:i + block] = d.topk(k + 1, dim=1, largest=False).values[:, k]
    return out.sqrt_()


def inside_manifold(query: Tensor, support: Tensor, radii: Tensor,
                    block: int = 1024) -> Tensor:
    """Boolean ``(Q,)``: is ``query[i]`` within ``radii[j]`` of some ``support[j]``?"""
    query, support = _features(query), _features(support)
    if query.shape[1] != support.shape[1]:
        raise ValueError(f"feature dimension mismatch: {tuple(query.shape)} vs "
                         f"{tuple(support.shape)}")
    r2 = radii.double().pow(2)[None, :]
    out = torch.empty(len(query), dtype=torch.bool)
    for i in range(0, len(query), block):
        out[i:i + block] = (sq_dists(query[i:i + block], support) <= r2).any(dim=1)
    return out


class PrecisionRecall:
    """Precision and recall of sample sets against a fixed ``real`` ``(N, F)`` set with
    ``k``-NN manifolds; the real set's radii are computed once (a study scores many sample
    sets against one reference). ``__call__(fake)`` -> ``{"precision", "recall"}``."""

    def __init__(self, real: Tensor, k: int = 3, block: int = 1024):
        self.real, self.k, self.block = _features(real), int(k), int(block)
        self.real_radii = knn_radii(self.real, self.k, self.block)

    def __call__(self, fake: Tensor) -> dict:
        fake = _features(fake)
        precision = inside_manifold(fake, self.real, self.real_radii, self.block)
        recall = inside_manifold(self.real, fake, knn_radii(fake, self.k, self.block),
                                 self.block)
        return {"precision": float(precision.double().mean()),
                "recall": float(recall.double().mean())}


def precision_recall(real: Tensor, fake: Tensor, k: int = 3, block: int = 1024) -> dict:
    """``{"precision", "recall"}`` of ``fake`` ``(M, F)`` against ``real`` ``(N, F)`` with
    ``k``-NN manifolds (the paper's default ``k = 3``)."""
    return PrecisionRecall(real, k, block)(fake)


def data_floor(metrics: dict[str, Callable[[Tensor, Tensor], float | dict]], draw_a: Tensor,
               draw_b: Tensor) -> dict[str, float]:
    """Each metric ``fn(samples, reference)`` evaluated on two independent draws of the true
    data (``draw_a`` as the "samples", ``draw_b`` as the reference; the same sizes as the
    samples and reference being scored). A metric returning a dict contributes one entry per
    key (``"<name>/<key>"``)."""
    out = {}
    for name, fn in metrics.items():
        value = fn(draw_a, draw_b)
        if isinstance(value, dict):
            out.update({f"{name}/{key}": float(v) for key, v in value.items()})
        else:
            out[name] = float(value)
    return out


__all__ = ["PrecisionRecall", "data_floor", "inside_manifold", "knn_radii",
           "precision_recall"]
