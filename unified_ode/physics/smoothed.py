"""The smoothed closed-form field: the exact field of the data convolved with ``N(0, h² I)``.

The exact field of a finite set reproduces its points (THEORY §7): a training-free sampler
that only memorises. Replacing the data's empirical law ``(1/M) Σ_j δ(y_j)`` by a Gaussian
kernel density estimate ``(1/M) Σ_j N(y_j, h² I)`` (bandwidth ``h`` in data units) gives a
field that generalises to new points near the data, still in closed form for Gaussian noise
kernels ``x = a y + s eps``: with ``y = y_j + h eta``,

* ``x = a y_j + s_h eps'``, ``s_h² = s² + a² h²``: the posterior over ``j`` is the exact
  field's at the wider scale ``s_h`` (:func:`smoothed_scale`);
* ``E[y | x, j] = y_j + c (x − a y_j)``, ``c = a h² / s_h²`` (Gaussian conjugacy), so
  ``E[y | x] = m + c (x − a m)`` for the posterior mean ``m = Σ_j w_j y_j``
  (:func:`smoothed_mean`).

At ``t → 0`` (``s → 0``) ``c → 1/a``: the last step keeps the state, a draw of the KDE, instead
of snapping it to a training point. For other noise laws (Student-t: PFGM, PFGM++) the data
convolved with a Gaussian has no closed-form posterior under the kernel, so the option is
refused there (:func:`check_smoothing`).
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_smoothing(field, h: float) -> float:
    """``h`` as a float after checking it: ``h >= 0``, and ``h > 0`` only for a Gaussian
    isotropic affine kernel (ve, vp, linear with its Gaussian prior)."""
    from unified_ode.physics.base import AffineField

    h = float(h)
    if not h >= 0:
        raise ValueError(f"network.smoothing must be a bandwidth >= 0 in data units, got {h}")
    if h > 0 and not (isinstance(field, AffineField) and field.has_isotropic_kernel()
                      and field.noise.delta_slope is not None):
        raise ValueError(
            f"network.smoothing={h}: the smoothed closed-form field needs a Gaussian noise "
            f"kernel (physics=ve, vp, or linear with its gaussian prior), got physics="
            f"{getattr(field, 'name', type(field).__name__)}: under other kernels the data "
            "convolved with a Gaussian has no closed-form posterior. Use smoothing=0 (the "
            "exact field of the points) or a Gaussian field")
    return h


def smoothed_scale(a: Tensor, s: Tensor, h: float) -> Tensor:
    """``s_h = sqrt(s² + a² h²)``: the kernel scale of the KDE's points, shape of ``s``."""
    return torch.sqrt(s * s + (a * h) ** 2)


def smoothed_mean(x: Tensor, a: Tensor, s: Tensor, mean: Tensor, h: float) -> Tensor:
    """``E[y | x]`` under the KDE from the posterior mean of the points ``mean`` (weights at
    scale :func:`smoothed_scale`): ``mean + c (x − a mean)``, ``c = a h² / (s² + a² h²)``.
    ``x``, ``mean`` ``(B, *shape)``; ``a``, ``s`` broadcastable to them."""
    c = a * h * h / (s * s + (a * h) ** 2)
    return mean + c * (x - a * mean)
