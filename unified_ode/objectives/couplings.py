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

``block_size`` (both): solve the plan on blocks of at most that many pairs instead of the whole
batch. The blocks come from a recursive bisection of the batch (:func:`bisect_blocks`): data and
noise are both split at the median of their projections on the principal axis of the two sets
together, until a block holds ``<= block_size`` of each — so a block's data and noise lie in the
same region, and the blocks' plans join into one plan close to the whole batch's (the exact
assignment is ``O(B³)``: ~50 ms at ``B = 512``, ~1 ms per block of 128; measured in
docs/couplings.md). Still a permutation (``ot``), so the endpoint marginals below hold unchanged.

What stays true: the plan's marginals are the batch's data and the batch's noise draws, so the
kernel at ``t = 0`` is still the data and the kernel at ``t_max`` still the prior (exactly for
``ot``; in expectation for ``sinkhorn``) — the learned ODE still carries the prior onto the data.
The marginals at intermediate ``t`` change: that is the point (straighter paths); the
objective's minimiser is the conditional expectation under the coupled path.
"""

from __future__ import annotations

import abc
import warnings
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


def _principal_axis(x: np.ndarray) -> np.ndarray:
    """Unit direction ``(d,)`` of largest spread of the rows of ``x`` ``(n, d)`` (float64):
    the top eigenvector of the scatter matrix for ``d <= 256``, else 30 power iterations from
    a fixed start (deterministic, so a seeded run stays reproducible)."""
    xc = x - x.mean(0)
    if x.shape[1] <= 256:
        return np.linalg.eigh(xc.T @ xc)[1][:, -1]
    v = np.full(x.shape[1], x.shape[1] ** -0.5)
    for _ in range(30):
        w = xc.T @ (xc @ v)
        norm = np.linalg.norm(w)
        if norm == 0:
            break
        v = w / norm
    return v


def bisect_blocks(y: np.ndarray, z: np.ndarray, block_size: int) -> list[tuple[np.ndarray,
                                                                               np.ndarray]]:
    """Partition rows of ``y`` and ``z`` (both ``(B, d)``) into blocks of equal counts
    ``<= block_size``: a list of ``(rows of y, rows of z)`` index arrays. Each split sorts the
    block's ``y`` and ``z`` rows by their projection on the principal axis of both together and
    cuts both at the same rank (so each half keeps equal counts)."""
    if block_size < 1:
        raise ValueError(f"coupling.block_size must be >= 1 (or null: the whole batch), got "
                         f"{block_size}")
    todo = [(np.arange(len(y)), np.arange(len(z)))]
    out = []
    while todo:
        rows, cols = todo.pop()
        if len(rows) <= block_size:
            out.append((rows, cols))
            continue
        axis = _principal_axis(np.concatenate([y[rows], z[cols]]))
        rows = rows[np.argsort(y[rows] @ axis, kind="stable")]
        cols = cols[np.argsort(z[cols] @ axis, kind="stable")]
        half = len(rows) // 2
        todo += [(rows[half:], cols[half:]), (rows[:half], cols[:half])]
    return out


def _cross_cost(y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``−2 y_i·z_j`` shifted to ``>= 0`` (as :func:`pairing_cost`), numpy float64."""
    cross = -2 * y @ z.T
    return cross - cross.min()


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

    def __init__(self, block_size: int | None = None):
        self.block_size = None if block_size is None else int(block_size)
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"coupling.block_size must be >= 1 (or null: the whole batch), "
                             f"got {block_size}")

    def pair(self, y, z, *, generator=None):
        from scipy.optimize import linear_sum_assignment

        yn = y.detach().flatten(1).double().cpu().numpy()
        zn = z.detach().flatten(1).double().cpu().numpy()
        perm = np.empty(len(yn), dtype=np.int64)
        for rows, cols in bisect_blocks(yn, zn, self.block_size or len(yn)):
            r, c = linear_sum_assignment(_cross_cost(yn[rows], zn[cols]))
            perm[rows[r]] = cols[c]
        return torch.as_tensor(perm, dtype=torch.long, device=y.device)

    def describe(self):
        out = super().describe()
        if self.block_size is not None:
            out["block_size"] = self.block_size
        return out


class SinkhornOT(Coupling):
    """Entropic OT (POT's ``ot.sinkhorn``) with regularisation ``reg`` times the spread
    (standard deviation) of the pairing cost;
    every data row draws its partner from its row of the plan (with replacement across rows).

    ``reg → 0`` approaches exact OT, ``reg → ∞`` independent pairing. ``block_size``: plans on
    the blocks of :func:`bisect_blocks` (each row draws its partner within its block)."""

    name = "sinkhorn"

    def __init__(self, reg: float = 0.05, num_iter: int = 1000, stop_threshold: float = 1e-6,
                 block_size: int | None = None):
        if not float(reg) > 0:
            raise ValueError(f"coupling.reg must be > 0, got {reg}")
        self.reg = float(reg)
        self.num_iter = int(num_iter)
        self.stop_threshold = float(stop_threshold)
        self.block_size = None if block_size is None else int(block_size)
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"coupling.block_size must be >= 1 (or null: the whole batch), "
                             f"got {block_size}")

    def _plan(self, cost: np.ndarray) -> np.ndarray:
        import ot

        scale = cost.std() if cost.std() > 0 else 1.0
        w = np.full(cost.shape[0], 1.0 / cost.shape[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # non-convergence: handled below
            plan = ot.sinkhorn(w, w, cost / scale, self.reg, numItermax=self.num_iter,
                               stopThr=self.stop_threshold)
            if not (np.isfinite(plan).all() and (plan.sum(1) > 0).all()):
                # the scaling iterations under/overflowed (a cost spread of many times
                # reg·std): the log-domain iterations give the same plan without overflow
                plan = ot.sinkhorn(w, w, cost / scale, self.reg, method="sinkhorn_log",
                                   numItermax=self.num_iter, stopThr=self.stop_threshold)
        return plan

    def plan(self, y: Tensor, z: Tensor) -> np.ndarray:
        """The ``(B, B)`` entropic plan of the whole batch (rows: data, columns: noise), each
        marginal uniform."""
        return self._plan(pairing_cost(y, z))

    def pair(self, y, z, *, generator=None):
        yn = y.detach().flatten(1).double().cpu().numpy()
        zn = z.detach().flatten(1).double().cpu().numpy()
        idx = torch.empty(len(yn), dtype=torch.long)
        for rows, cols in bisect_blocks(yn, zn, self.block_size or len(yn)):
            plan = torch.as_tensor(self._plan(_cross_cost(yn[rows], zn[cols])))
            draw = torch.multinomial(plan / plan.sum(1, keepdim=True), 1,
                                     generator=generator).squeeze(1)
            idx[torch.as_tensor(rows)] = torch.as_tensor(cols)[draw]
        return idx.to(y.device)

    def describe(self):
        out = {**super().describe(), "reg": self.reg}
        if self.block_size is not None:
            out["block_size"] = self.block_size
        return out


__all__ = ["Coupling", "ExactOT", "Independent", "SinkhornOT", "bisect_blocks", "pair_cost"]
