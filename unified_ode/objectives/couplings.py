"""Minibatch couplings of data and prior noise (``coupling=`` config group).

An affine field's kernel is ``x = a(t) y + s(t) eps``; the objectives draw ``eps`` independently
of ``y`` by default. A coupling instead pairs the batch's data ``y`` ``(B, *shape)`` with the
batch's noise draws by a plan computed on the cost ``||y − s(t_max)·eps||²`` (the distance from
each data point to each prior sample):

* ``independent``: no pairing (today's behaviour, bit for bit: the objective draws the kernel
  sample exactly as without a coupling);
* ``ot``: exact minibatch optimal transport, a permutation (scipy's assignment solver); for the
  linear field this is OT-CFM (Tong et al. 2023);
* ``sinkhorn``: entropic OT with regularisation ``reg`` (relative to the cost's spread), pairs drawn
  from the plan row by row (a Schrödinger-bridge-style pairing; POT's Sinkhorn).

What stays true: the plan's marginals are the batch's data and the batch's noise draws, so the
kernel at ``t = 0`` is still the data and the kernel at ``t_max`` still the prior (exactly for
``ot``; in expectation for ``sinkhorn``) — the learned ODE still carries the prior onto the data.
The marginals at intermediate ``t`` change: that is the point (straighter paths); the
objective's minimiser is the conditional expectation under the coupled path.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor


def pair_cost(y: Tensor, z: Tensor) -> np.ndarray:
    """Squared distances ``(B, B)`` (float64 numpy) between rows of ``y`` and ``z``."""
    yf, zf = y.detach().flatten(1).double(), z.detach().flatten(1).double()
    cost = (yf * yf).sum(1)[:, None] - 2 * yf @ zf.T + (zf * zf).sum(1)[None, :]
    return cost.clamp_min(0).cpu().numpy()


def pairing_cost(y: Tensor, z: Tensor) -> np.ndarray:
    """The part of :func:`pair_cost` that depends on the pairing, ``−2 y_i·z_j`` shifted to be
    ``>= 0`` ``(B, B)``: the row terms ``||y_i||²`` and column terms ``||z_j||²`` change neither
    the OT permutation nor the entropic plan, but with a far-out prior (``s(t_max) = 80``) they
    dwarf the cross term and slow the solvers down."""
    yf, zf = y.detach().flatten(1).double(), z.detach().flatten(1).double()
    cross = -2 * yf @ zf.T
    return (cross - cross.min()).cpu().numpy()


class Coupling(abc.ABC):
    """Pairs data with noise draws; :meth:`pair` returns, for every data row ``i``, the index of
    the noise draw it is paired with (``None``: the identity, i.e. independent draws)."""

    name: ClassVar[str]
    #: False for the independent coupling (the objectives then draw kernel samples directly).
    pairs: ClassVar[bool] = True

    @classmethod
    def unsupported(cls, field) -> str | None:
        """Why ``field`` cannot be coupled (``None``: it can)."""
        if not hasattr(field, "kernel_from_noise"):
            return (f"coupling={cls.name} pairs data with the kernel's noise draws, which needs "
                    f"an affine field (x = a(t) y + s(t) eps); physics={field.name} is not one. "
                    "Use coupling=independent")
        return None

    @abc.abstractmethod
    def pair(self, y: Tensor, z: Tensor, *, generator=None) -> Tensor | None:
        """``(B,)`` long indices into ``z`` ``(B, *shape)`` paired with the rows of ``y``."""

    def describe(self) -> dict:
        return {"coupling": self.name}


class Independent(Coupling):
    """No pairing: independent draws (the objectives' default path)."""

    name = "independent"
    pairs = False

    @classmethod
    def unsupported(cls, field):
        return None

    def pair(self, y, z, *, generator=None):
        return None


class ExactOT(Coupling):
    """Exact minibatch OT on squared distances: a permutation (Hungarian-type assignment,
    ``scipy.optimize.linear_sum_assignment``; for uniform weights the OT plan is a
    permutation)."""

    name = "ot"

    def pair(self, y, z, *, generator=None):
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(pairing_cost(y, z))
        perm = np.empty_like(cols)
        perm[rows] = cols
        return torch.as_tensor(perm, dtype=torch.long, device=y.device)


class SinkhornOT(Coupling):
    """Entropic OT (POT's ``ot.sinkhorn``) with regularisation ``reg`` times the spread
    (standard deviation) of the pairing cost;
    every data row draws its partner from its row of the plan (with replacement across rows).

    ``reg → 0`` approaches exact OT, ``reg → ∞`` independent pairing."""

    name = "sinkhorn"

    def __init__(self, reg: float = 0.05, num_iter: int = 1000, stop_threshold: float = 1e-6):
        if not float(reg) > 0:
            raise ValueError(f"coupling.reg must be > 0, got {reg}")
        self.reg = float(reg)
        self.num_iter = int(num_iter)
        self.stop_threshold = float(stop_threshold)

    def plan(self, y: Tensor, z: Tensor) -> np.ndarray:
        """The ``(B, B)`` entropic plan (rows: data, columns: noise), each marginal uniform."""
        import ot

        cost = pairing_cost(y, z)
        scale = cost.std() if cost.std() > 0 else 1.0
        w = np.full(cost.shape[0], 1.0 / cost.shape[0])
        return ot.sinkhorn(w, w, cost / scale, self.reg, numItermax=self.num_iter,
                           stopThr=self.stop_threshold)

    def pair(self, y, z, *, generator=None):
        plan = torch.as_tensor(self.plan(y, z), dtype=torch.float64)
        rows = plan / plan.sum(1, keepdim=True)
        idx = torch.multinomial(rows, 1, generator=generator).squeeze(1)
        return idx.to(y.device)

    def describe(self):
        return {**super().describe(), "reg": self.reg}


__all__ = ["Coupling", "ExactOT", "Independent", "SinkhornOT", "pair_cost"]
