"""A brute-force float64 reference of the exact field, independent of the package's fast path.

Logits are :meth:`Field.kernel_log_prob` of every (query, point) pair by direct differences in
float64 (no matrix-product distances, no streaming); the posterior is a plain softmax over all
points. Used by tests/test_exact.py and bench/exact.py to measure the fast path's error.
"""

from __future__ import annotations

import math

import torch

from unified_ode.physics.base import AffineField


def reference_logits(field, x, data, t, *, pair_budget: int = 1 << 22):
    """``log p_t(x_i | y_j)`` ``(N, M)`` in float64, pair by pair (``kernel_log_prob``)."""
    x, data = x.double(), data.double()
    t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
    d = math.prod(x.shape[1:])
    cols = []
    step = max(1, pair_budget // (x.shape[0] * d))
    for j in range(0, data.shape[0], step):
        y = data[j:j + step]
        n, m = x.shape[0], y.shape[0]
        xe = x.unsqueeze(1).expand(n, m, *x.shape[1:]).reshape(n * m, *x.shape[1:])
        ye = y.unsqueeze(0).expand(n, m, *y.shape[1:]).reshape(n * m, *y.shape[1:])
        te = t.unsqueeze(1).expand(n, m).reshape(-1)
        cols.append(field.kernel_log_prob(xe, ye, te).view(n, m))
    return torch.cat(cols, dim=1)


def reference_posterior(field, x, data, t):
    """Float64 posterior weights ``(N, M)``."""
    return torch.softmax(reference_logits(field, x, data, t), dim=1)


def reference_drift(field, x, data, t):
    """The exact drift ``E[v(x, t | y) | x, t]`` ``(N, *shape)`` in float64."""
    w = reference_posterior(field, x, data, t)
    x, data = x.double(), data.double()
    t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
    if isinstance(field, AffineField):
        mean = (w @ data.flatten(1)).view_as(x)
        return field.drift_from_denoiser(x, t, mean)
    n, d = x.shape[0], math.prod(x.shape[1:])
    out = torch.zeros(n, d, dtype=torch.float64)
    step = max(1, (1 << 22) // (n * d))
    for j in range(0, data.shape[0], step):
        y = data[j:j + step]
        m = y.shape[0]
        xe = x.unsqueeze(1).expand(n, m, *x.shape[1:]).reshape(n * m, *x.shape[1:])
        ye = y.unsqueeze(0).expand(n, m, *y.shape[1:]).reshape(n * m, *y.shape[1:])
        te = t.unsqueeze(1).expand(n, m).reshape(-1)
        v = torch.nan_to_num(field.conditional_velocity(xe, ye, te)).view(n, m, d)
        out += torch.einsum("nm,nmd->nd", w[:, j:j + step], v)
    return out.view_as(x)


def relative_error(a, b):
    """Largest per-row ``||a − b|| / ||b||``."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    return float(((a - b).norm(dim=1) / b.norm(dim=1).clamp_min(1e-300)).max())
