"""Image data modules: the shared base and the two embedded, offline sets (digits, faces).

Every image module yields batches ``(B, C, H, W)`` float32 scaled to ``[-1, 1]``
(``sigma_data = 0.5``, EDM's value for such data), with optional random horizontal flips.
Images are kept in memory as ``uint8`` (or float32 already in ``[-1, 1]``) and converted batch
by batch. The held-out split is disjoint from the training split; it feeds metrics.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from unified_ode.errors import UserError


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """``uint8`` pixels ``[0, 255]`` -> float32 ``[-1, 1]``; float input is returned as float32
    (it is already in ``[-1, 1]``)."""
    if x.dtype == torch.uint8:
        return x.float() / 127.5 - 1.0
    return x.float()


class ImageBatch:
    """Collate function: stack ``(C, H, W)`` images, scale to ``[-1, 1]`` and flip each image
    left-right with probability ``flip_p`` (module-level class, so worker processes can pickle
    it; the random flips follow torch's seed, which Lightning seeds per worker)."""

    def __init__(self, flip_p: float):
        self.flip_p = float(flip_p)

    def __call__(self, items):
        """``(B, C, H, W)`` float32; ``(images, labels (B,) long)`` when every item is an
        ``(image, label)`` pair (class-conditional data)."""
        labelled = all(isinstance(it, (tuple, list)) and len(it) == 2 for it in items)
        x = torch.stack([it[0] if isinstance(it, (tuple, list)) else it for it in items])
        x = to_unit_range(x)
        if self.flip_p > 0:
            flip = torch.rand(x.shape[0]) < self.flip_p
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if labelled:
            return x.contiguous(), torch.as_tensor([int(it[1]) for it in items])
        return x.contiguous()


def split_indices(n: int, heldout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed, seeded split of ``range(n)`` into (train, held-out) index arrays."""
    if not 0 <= heldout_fraction < 1:
        raise UserError(f"dataset.heldout_fraction must be in [0, 1), got {heldout_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_held = int(round(n * heldout_fraction))
    return np.sort(perm[n_held:]), np.sort(perm[:n_held])


def resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize float images ``(N, C, H, W)`` so the shorter side is ``size`` (antialiased
    bilinear), then centre-crop to ``size × size``."""
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True,
                          align_corners=False)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[..., top:top + size, left:left + size]
    return x


class ImageDataModule(L.LightningDataModule):
    """Base class. Subclasses set ``data_shape`` in ``__init__`` (before any file is read) and
    implement :meth:`_load` returning ``(train, heldout)`` image tensors ``(N, C, H, W)``,
    ``uint8`` or float32 in ``[-1, 1]``.

    Parameters
    ----------
    batch_size: training batch size. hflip: random horizontal flips during training.
    num_workers: DataLoader workers. exact_max: at most this many training images in
    :meth:`train_tensor` (the data of ``network=exact``); ``None`` for all.
    conditional: batches are ``(images, labels)``; subclasses with labels set
    :attr:`num_classes` and, in :meth:`_load`, ``self._labels = (train, heldout)`` (long).
    """

    kind = "images"
    sigma_data = 0.5
    #: Classes of a labelled set (0: the set has no labels).
    num_classes = 0

    def __init__(self, batch_size: int = 128, hflip: bool = False, num_workers: int = 0,
                 exact_max: int | None = None, conditional: bool = False):
        super().__init__()
        self.conditional = bool(conditional)
        self._labels: tuple[torch.Tensor, torch.Tensor] | None = None
        self._check_labelled()
        if int(batch_size) < 1:
            raise UserError(f"dataset.batch_size must be positive, got {batch_size}")
        self.batch_size = int(batch_size)
        self.hflip = bool(hflip)
        self.num_workers = int(num_workers)
        self.exact_max = None if exact_max is None else int(exact_max)
        self.data_shape: tuple[int, int, int] = (0, 0, 0)
        self._train: torch.Tensor | None = None
        self._heldout: torch.Tensor | None = None

    # subclasses -----------------------------------------------------------------------------
    def _load(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _check_labelled(self) -> None:
        """A :class:`UserError` for ``conditional=true`` on a set without labels."""
        if self.conditional and not self.num_classes:
            raise UserError(f"dataset.conditional=true needs class labels, and "
                            f"{type(self).__name__} has none; labelled image sets: digits, "
                            "mnist, fashion_mnist, cifar10, image_folder (one sub-folder per "
                            "class). Set dataset.conditional=false.")

    # labels ----------------------------------------------------------------------------------
    def _labels_or_error(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._ensure_loaded()
        if self._labels is None:
            raise UserError(f"{type(self).__name__} has no class labels")
        return self._labels

    def train_labels(self) -> torch.Tensor:
        """Classes ``(N,)`` long of :meth:`train_tensor`'s images."""
        train = self._labels_or_error()[0]
        return train if self.exact_max is None else train[: self.exact_max]

    def heldout_labels(self, n: int | None = None) -> torch.Tensor:
        """Classes of :meth:`heldout`'s images."""
        held = self._labels_or_error()[1]
        return held if n is None else held[: int(n)]

    # loading ---------------------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        if self._train is None:
            train, held = self._load()
            if tuple(train.shape[1:]) != tuple(self.data_shape):
                raise UserError(f"{type(self).__name__}: loaded images of shape "
                                f"{tuple(train.shape[1:])}, expected {self.data_shape}")
            if len(train) == 0:
                raise UserError(f"{type(self).__name__}: the training split is empty")
            self._train, self._heldout = train, held

    def setup(self, stage: str | None = None) -> None:
        self._ensure_loaded()

    @property
    def num_train(self) -> int:
        self._ensure_loaded()
        return len(self._train)

    def train_tensor(self) -> torch.Tensor:
        """Training images ``(N, C, H, W)`` float32 in ``[-1, 1]`` (the first ``exact_max`` of
        them when that is set): the data of the exact field."""
        self._ensure_loaded()
        x = self._train if self.exact_max is None else self._train[: self.exact_max]
        return to_unit_range(x)

    def heldout(self, n: int | None = None) -> torch.Tensor:
        """``(min(n, size), C, H, W)`` held-out images in ``[-1, 1]``, disjoint from training."""
        self._ensure_loaded()
        held = self._heldout
        if held is None or len(held) == 0:
            raise UserError(f"{type(self).__name__} has no held-out images; set "
                            "dataset.heldout_fraction > 0")
        return to_unit_range(held if n is None else held[: int(n)])

    def train_dataloader(self) -> DataLoader:
        self._ensure_loaded()
        extra = (self._labels_or_error()[0],) if self.conditional else ()
        ds: Dataset = TensorDataset(self._train, *extra)
        drop_last = len(self._train) >= self.batch_size
        return DataLoader(ds, batch_size=self.batch_size, shuffle=True, drop_last=drop_last,
                          num_workers=self.num_workers,
                          collate_fn=ImageBatch(0.5 if self.hflip else 0.0),
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self):
        """The model's validation data (prior draws for the sample metrics, see
        ``GenerativeODE.val_dataloader``); a data set has no validation split of its own."""
        return self.trainer.lightning_module.val_dataloader()

    def describe(self) -> dict:
        return {"dataset": type(self).__name__, "data_shape": list(self.data_shape),
                "hflip": self.hflip}


class DigitsDataModule(ImageDataModule):
    """scikit-learn's 8×8 handwritten digits (1,797 images, 1 channel, values 0–16, shipped with
    scikit-learn: no download). Pixels ``v`` map to ``v/8 − 1`` in ``[-1, 1]``.

    ``heldout_fraction`` of the images (a fixed seeded split) are held out. Labels: the digit.
    """

    num_classes = 10

    def __init__(self, batch_size: int = 128, hflip: bool = False, heldout_fraction: float = 0.1,
                 seed: int = 0, num_workers: int = 0, exact_max: int | None = None,
                 conditional: bool = False):
        super().__init__(batch_size, hflip, num_workers, exact_max, conditional)
        self.heldout_fraction = float(heldout_fraction)
        self.seed = int(seed)
        split_indices(1, self.heldout_fraction, 0)  # validate now
        self.data_shape = (1, 8, 8)

    def _load(self):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.from_numpy(digits.images.astype(np.float32))[:, None] / 8.0 - 1.0
        labels = torch.from_numpy(digits.target.astype(np.int64))
        tr, he = split_indices(len(images), self.heldout_fraction, self.seed)
        self._labels = (labels[tr], labels[he])
        return images[tr], images[he]


class FacesDataModule(ImageDataModule):
    """Faces of scikit-image's ``skimage.data.lfw_subset()`` (Labeled Faces in the Wild: 100
    grey 25×25 face crops, shipped with scikit-image; the set's other 100 images are non-faces
    and are left out), resized to ``size × size`` (antialiased bilinear), 1 channel.
    """

    def __init__(self, size: int = 32, batch_size: int = 64, hflip: bool = True,
                 heldout_fraction: float = 0.1, seed: int = 0, num_workers: int = 0,
                 exact_max: int | None = None, conditional: bool = False):
        super().__init__(batch_size, hflip, num_workers, exact_max, conditional)
        if int(size) < 4:
            raise UserError(f"dataset.size must be at least 4, got {size}")
        self.size = int(size)
        self.heldout_fraction = float(heldout_fraction)
        self.seed = int(seed)
        split_indices(1, self.heldout_fraction, 0)
        self.data_shape = (1, self.size, self.size)

    def _load(self):
        from skimage.data import lfw_subset

        faces = torch.from_numpy(lfw_subset()[:100].astype(np.float32))[:, None]  # [0, 1]
        faces = resize_square(faces, self.size).clamp(0, 1) * 2 - 1
        tr, he = split_indices(len(faces), self.heldout_fraction, self.seed)
        return faces[tr].contiguous(), faces[he].contiguous()
