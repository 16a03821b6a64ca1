"""Any folder of images (CelebA, FFHQ, a user's own): resized and centre-cropped to a square.

All files with an image extension under ``path`` (recursively, sorted) are used. Each image is
converted to RGB (``channels=3``) or greyscale (``channels=1``), its shorter side resized to
``size`` (antialiased), then centre-cropped to ``size × size``. A fixed, seeded
``heldout_fraction`` of the files is held out. With ``cache=true`` every image is decoded once
and kept in memory as uint8 (``N·C·size²`` bytes); otherwise files are decoded per batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from unified_ode.data.images import ImageBatch, ImageDataModule, split_indices
from unified_ode.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def list_images(path: Path) -> list[Path]:
    """Image files under ``path`` (recursive, sorted); :class:`UserError` if none."""
    if not path.exists():
        raise UserError(f"dataset=image_folder: {path.resolve()} does not exist. Set "
                        "dataset.path=<a folder of images>.")
    if not path.is_dir():
        raise UserError(f"dataset=image_folder: {path.resolve()} is not a folder. Set "
                        "dataset.path=<a folder of images>.")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                   and p.is_file())
    if not files:
        raise UserError(f"dataset=image_folder: no image files ({', '.join(IMAGE_EXTENSIONS)}) "
                        f"in {path.resolve()} or its subfolders.")
    return files


def load_image(path: Path, size: int, channels: int) -> torch.Tensor:
    """Decode, resize (shorter side -> ``size``) and centre-crop one file: ``(C, size, size)``
    uint8."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if channels == 3 else "L")
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=None)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"dataset=image_folder: cannot read image {path} ({exc}); remove it "
                        "from the folder.") from exc
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def folder_classes(path: Path, files: list[Path]) -> tuple[list[str], list[int]]:
    """torchvision-style classes: the sorted names of ``path``'s sub-folders that hold images,
    and each file's class index; a :class:`UserError` when a file lies directly in ``path``."""
    top = [f.relative_to(path).parts for f in files]
    loose = [f for f, parts in zip(files, top) if len(parts) < 2]
    if loose:
        raise UserError(f"dataset.conditional=true takes each image's class from its sub-folder "
                        f"of {path.resolve()} (one sub-folder per class), but {loose[0]} and "
                        f"{len(loose) - 1} other file(s) lie directly in it. Move them into "
                        "class folders or set dataset.conditional=false.")
    names = sorted({parts[0] for parts in top})
    index = {name: i for i, name in enumerate(names)}
    return names, [index[parts[0]] for parts in top]


class _Files(Dataset):
    def __init__(self, files: list[Path], size: int, channels: int, labels=None):
        self.files, self.size, self.channels, self.labels = files, size, channels, labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        image = load_image(self.files[i], self.size, self.channels)
        return image if self.labels is None else (image, self.labels[i])


class ImageFolderDataModule(ImageDataModule):
    """Images from ``path``, ``channels × size × size``; with ``conditional=true`` the class of
    an image is its top-level sub-folder (sorted names -> ``0..num_classes-1``)."""

    def __init__(self, path: str = "data/images", size: int = 64, channels: int = 3,
                 batch_size: int = 64, hflip: bool = True, heldout_fraction: float = 0.02,
                 seed: int = 0, cache: bool = False, num_workers: int = 0,
                 exact_max: int | None = 10_000, conditional: bool = False):
        super().__init__(batch_size, hflip, num_workers, exact_max, conditional)
        if int(channels) not in (1, 3):
            raise UserError(f"dataset.channels must be 1 or 3, got {channels}")
        if int(size) < 4:
            raise UserError(f"dataset.size must be at least 4, got {size}")
        self.path = Path(str(path)).expanduser()
        self.size, self.channels = int(size), int(channels)
        self.heldout_fraction, self.seed = float(heldout_fraction), int(seed)
        self.cache = bool(cache)
        split_indices(1, self.heldout_fraction, 0)
        self.data_shape = (self.channels, self.size, self.size)
        self._files: tuple[list[Path], list[Path]] | None = None
        self._classes: list[str] = []

    def _check_labelled(self) -> None:
        pass  # the classes are the sub-folders: checked when the folder is listed (_split)

    @property
    def num_classes(self) -> int:
        """Number of class sub-folders (0 unless ``conditional``)."""
        if not self.conditional:
            return 0
        self._split()
        return len(self._classes)

    def _split(self) -> tuple[list[Path], list[Path]]:
        if self._files is None:
            files = list_images(self.path)
            tr, he = split_indices(len(files), self.heldout_fraction, self.seed)
            if self.conditional:
                self._classes, labels = folder_classes(self.path, files)
                labels = torch.as_tensor(labels, dtype=torch.long)
                self._labels = (labels[tr], labels[he])
            self._files = [files[i] for i in tr], [files[i] for i in he]
        return self._files

    def _stack(self, files: list[Path]) -> torch.Tensor:
        if not files:
            return torch.empty(0, *self.data_shape, dtype=torch.uint8)
        return torch.stack([load_image(f, self.size, self.channels) for f in files])

    def _ensure_loaded(self) -> None:
        # Without cache only the (capped) exact-field set and the held-out set are decoded.
        if self._train is None:
            tr, he = self._split()
            if not tr:
                raise UserError(f"dataset=image_folder: {self.path.resolve()} has too few "
                                "images for a training split; lower dataset.heldout_fraction")
            keep = tr if self.cache or self.exact_max is None else tr[: self.exact_max]
            self._train, self._heldout = self._stack(keep), self._stack(he)

    def setup(self, stage: str | None = None) -> None:
        self._split()  # fail early on a missing or empty folder; decode lazily

    @property
    def num_train(self) -> int:
        return len(self._split()[0])

    def train_dataloader(self) -> DataLoader:
        if self.cache:
            return super().train_dataloader()
        tr, _ = self._split()
        labels = self._labels[0].tolist() if self.conditional else None
        return DataLoader(_Files(tr, self.size, self.channels, labels),
                          batch_size=self.batch_size,
                          shuffle=True, drop_last=len(tr) >= self.batch_size,
                          num_workers=self.num_workers,
                          collate_fn=ImageBatch(0.5 if self.hflip else 0.0),
                          persistent_workers=self.num_workers > 0)
