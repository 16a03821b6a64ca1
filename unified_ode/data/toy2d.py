"""2-D toy distributions generated in code, as a LightningDataModule.

Keys: ``checkerboard``, ``moons``, ``eight_gaussians``, ``swiss_roll``, ``circles``,
``pinwheel``. Every set is standardised to zero mean and unit standard deviation (over both
coordinates), so ``sigma_data = 1`` for all of them and one network configuration fits all.
The training and held-out sets come from independent seeds. With ``conditional=true`` the
sets of :data:`TOY_LABELS` yield ``(x, label)`` batches (eight Gaussians: the mode; moons: the
moon; checkerboard: the square).
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from unified_ode.errors import UserError


def _checkerboard(n, rng):
    x1 = rng.uniform(-2, 2, n)
    x2 = rng.uniform(0, 1, n) + rng.integers(0, 2, n) * 2 - 2
    x2 = x2 + (np.floor(x1) % 2)
    return np.stack([x1, x2], 1)


def _moons(n, rng):
    n1 = n // 2
    a = rng.uniform(0, math.pi, n1)
    b = rng.uniform(0, math.pi, n - n1)
    upper = np.stack([np.cos(a), np.sin(a)], 1)
    lower = np.stack([1 - np.cos(b), 0.5 - np.sin(b)], 1)
    return np.concatenate([upper, lower]) + rng.normal(0, 0.05, (n, 2))


def _eight_gaussians(n, rng):
    angles = rng.integers(0, 8, n) * (2 * math.pi / 8)
    centers = 2.0 * np.stack([np.cos(angles), np.sin(angles)], 1)
    return centers + rng.normal(0, 0.1, (n, 2))


def _swiss_roll(n, rng):
    t = 1.5 * math.pi * (1 + 2 * rng.uniform(0, 1, n))
    return np.stack([t * np.cos(t), t * np.sin(t)], 1) / 5 + rng.normal(0, 0.05, (n, 2))


def _circles(n, rng):
    r = np.where(rng.uniform(0, 1, n) < 0.5, 1.0, 0.5)
    a = rng.uniform(0, 2 * math.pi, n)
    return r[:, None] * np.stack([np.cos(a), np.sin(a)], 1) + rng.normal(0, 0.03, (n, 2))


def _pinwheel(n, rng, arms=5):
    k = rng.integers(0, arms, n)
    feats = rng.normal(0, 1, (n, 2)) * np.array([0.3, 0.05]) + np.array([1.0, 0.0])
    angle = k * 2 * math.pi / arms + 0.25 * np.exp(feats[:, 0])
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([c * feats[:, 0] - s * feats[:, 1], s * feats[:, 0] + c * feats[:, 1]], 1)


class BatchedTensorDataset(Dataset):
    """Rows of tensors ``(N, *shape_k)`` (points, and labels when conditional), fetched a whole
    batch at a time.

    ``DataLoader`` hands ``__getitems__`` the batch's indices, so a batch is one indexing
    operation per tensor instead of ``batch_size`` item reads and a collate (measured: the
    per-item path cost ~10% of a default training step). Items are tuples, as with
    ``TensorDataset``; use :func:`stack_rows` as the loader's ``collate_fn``.
    """

    def __init__(self, *tensors: torch.Tensor):
        if not tensors or any(t.shape[0] != tensors[0].shape[0] for t in tensors):
            raise ValueError("BatchedTensorDataset needs tensors with the same number of rows")
        self.tensors = tensors

    def __len__(self) -> int:
        return self.tensors[0].shape[0]

    def __getitem__(self, index):
        return tuple(t[index] for t in self.tensors)

    def __getitems__(self, indices: list[int]):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return tuple(t[idx] for t in self.tensors)


def stack_rows(batch):
    """``collate_fn`` for :class:`BatchedTensorDataset`: the batch arrives already stacked
    (a tuple of ``t[indices]`` from ``__getitems__``); a list of single items (another
    fetcher) is stacked here."""
    if isinstance(batch, tuple):
        return list(batch)
    return [torch.stack(column) for column in zip(*batch)]


def _checkerboard_labels(raw):
    """The square: column ``c = floor(x1) + 2`` and pair ``k`` of the row ``2k + c mod 2``
    -> ``2c + k`` in ``0..7`` (exact: read off the raw coordinates)."""
    col = np.floor(raw[:, 0]).astype(np.int64) + 2
    row = np.floor(raw[:, 1]).astype(np.int64) + 2
    return 2 * col + (row - col % 2) // 2


def _moons_labels(raw):
    """The moon: the generator's first ``n // 2`` points are the upper moon (0)."""
    return (np.arange(len(raw)) >= len(raw) // 2).astype(np.int64)


def _eight_gaussians_labels(raw):
    """The mode: nearest centre angle (the modes' noise is 0.1 at radius 2, so a point is
    nearer another mode's angle only beyond 7.6 standard deviations)."""
    angle = np.arctan2(raw[:, 1], raw[:, 0])
    return np.round(angle / (2 * math.pi / 8)).astype(np.int64) % 8


#: The toy sets with classes: ``name -> (num_classes, labels of raw points)``.
TOY_LABELS = {
    "checkerboard": (8, _checkerboard_labels),
    "moons": (2, _moons_labels),
    "eight_gaussians": (8, _eight_gaussians_labels),
}


#: Generators that emit their rows grouped (moons: the upper moon's ``n // 2`` points first);
#: :func:`toy_samples` shuffles their rows, so a prefix of a draw is never one group only.
EMITTED_IN_ORDER = frozenset({"moons"})

TOY_SETS = {
    "checkerboard": _checkerboard,
    "moons": _moons,
    "eight_gaussians": _eight_gaussians,
    "swiss_roll": _swiss_roll,
    "circles": _circles,
    "pinwheel": _pinwheel,
}


def toy_samples(name: str, n: int, seed: int, *, return_labels: bool = False):
    """``n`` standardised points ``(n, 2)`` float32 of the toy set ``name``; with
    ``return_labels``, also their classes ``(n,)`` long (:data:`TOY_LABELS`)."""
    if name not in TOY_SETS:
        raise UserError(f"unknown toy data set {name!r}. Choose dataset.name from: "
                        f"{', '.join(sorted(TOY_SETS))}")
    if return_labels and name not in TOY_LABELS:
        raise UserError(f"dataset.conditional=true needs labels, and the toy set {name!r} "
                        f"has none; toy sets with classes: {', '.join(sorted(TOY_LABELS))}")
    rng = np.random.default_rng(seed)
    raw = TOY_SETS[name](n, rng)
    labels = TOY_LABELS[name][1](raw) if return_labels else None  # before any reordering
    if name in EMITTED_IN_ORDER:  # rows in random order: any first k are a draw of the law
        order = rng.permutation(n)
        raw = raw[order]
        labels = None if labels is None else labels[order]
    # Standardise with statistics of a large fixed reference draw, so every split and size
    # shares one affine map.
    ref = TOY_SETS[name](100_000, np.random.default_rng(12345))
    out = (raw - ref.mean(0)) / ref.std()
    points = torch.from_numpy(out.astype(np.float32))
    if return_labels:
        return points, torch.from_numpy(labels)
    return points


class Toy2DDataModule(L.LightningDataModule):
    """Samples ``(B, 2)`` from a 2-D toy distribution.

    Parameters
    ----------
    name: which toy set (see ``TOY_SETS``).
    n_train, n_heldout: sizes of the training set and the held-out set used by metrics.
    batch_size: training batch size. seed: seed of the training draw (held-out uses seed+1).
    conditional: batches are ``(x, label)`` (sets in :data:`TOY_LABELS`; ``num_classes``).
    """

    kind = "points"
    sigma_data = 1.0

    def __init__(self, name: str = "checkerboard", n_train: int = 50_000,
                 n_heldout: int = 5_000, batch_size: int = 512, seed: int = 0,
                 conditional: bool = False):
        super().__init__()
        if name not in TOY_SETS or conditional:  # fail at construction, before training
            toy_samples(name, 1, seed, return_labels=bool(conditional))
        self.conditional = bool(conditional)
        self.num_classes = TOY_LABELS[name][0] if self.conditional else 0
        self.name = name
        self.n_train = int(n_train)
        self.n_heldout = int(n_heldout)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.data_shape = (2,)
        self._train = None

    def train_tensor(self) -> torch.Tensor:
        """The whole training set ``(n_train, 2)`` (also the data of the exact field)."""
        if self._train is None:
            self._train = toy_samples(self.name, self.n_train, self.seed)
        return self._train

    def heldout(self, n: int | None = None) -> torch.Tensor:
        """``(n, 2)`` held-out points, independent of the training set."""
        return toy_samples(self.name, n or self.n_heldout, self.seed + 1)

    def train_labels(self) -> torch.Tensor:
        """Classes ``(n_train,)`` long of :meth:`train_tensor` (conditional sets)."""
        return toy_samples(self.name, self.n_train, self.seed, return_labels=True)[1]

    def heldout_labels(self, n: int | None = None) -> torch.Tensor:
        """Classes ``(n,)`` long of :meth:`heldout` (conditional sets)."""
        return toy_samples(self.name, n or self.n_heldout, self.seed + 1, return_labels=True)[1]

    def train_dataloader(self):
        """Batches of points ``[(B, 2)]``, or ``[(B, 2), (B,)]`` with the labels when
        ``conditional``. Full batches only (the last partial one is dropped), except that a
        training set smaller than one batch is one batch of all its points (as the image
        data modules do), never an epoch without a batch."""
        tensors = (self.train_tensor(),) + ((self.train_labels(),) if self.conditional else ())
        return DataLoader(BatchedTensorDataset(*tensors), batch_size=self.batch_size,
                          shuffle=True, drop_last=self.n_train >= self.batch_size,
                          collate_fn=stack_rows, num_workers=0)

    def val_dataloader(self):
        """The model's validation data (prior draws for the sample metrics, see
        ``GenerativeODE.val_dataloader``); a data set has no validation split of its own."""
        return self.trainer.lightning_module.val_dataloader()
