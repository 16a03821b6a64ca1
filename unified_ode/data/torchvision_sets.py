"""MNIST, Fashion-MNIST and CIFAR-10 from their standard on-disk formats.

``download=true`` fetches the files with torchvision (which verifies the archives' MD5
checksums). Without it the files must already be in ``root``; when they are not, a
:class:`UserError` names the folder and the files expected, so an offline user can copy them in.

* MNIST / Fashion-MNIST: read with ``torchvision.datasets.MNIST`` / ``FashionMNIST`` from the
  uncompressed IDX files ``<root>/<MNIST|FashionMNIST>/raw/{train,t10k}-{images-idx3,
  labels-idx1}-ubyte`` (torchvision checks only that the four files exist). Where only the
  gzipped ``<name>.gz`` (as the mirrors serve them) is there, it is decompressed next to
  itself first (what torchvision's download does; an existing file is never overwritten).
  Labels: torchvision's ``targets``.
* CIFAR-10: the python pickles ``<root>/cifar-10-batches-py/{data_batch_1..5, test_batch,
  batches.meta}``, each batch a dict with ``data`` (``(N, 3072)`` uint8, channel-major
  32×32 planes) and ``labels`` (keys ``str`` or ``bytes``). They are parsed here with a
  restricted unpickler (:class:`CifarUnpickler`: ``latin1`` encoding as torchvision uses, and
  only the NumPy array constructors those files name; a crafted file naming any other callable
  is refused before anything is called); ``verify_checksums=true`` additionally checks the
  files against torchvision's published MD5 sums (a copy of the official files passes,
  anything else fails).
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from unified_ode.data.images import ImageDataModule
from unified_ode.errors import UserError

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_FILES = (*CIFAR_TRAIN, "test_batch", "batches.meta")


def _missing(folder: Path, names) -> list[str]:
    return [n for n in names if not (folder / n).is_file()]


def _download(dataset: str, fetch, folder: Path, names) -> None:
    try:
        fetch()
    except Exception as exc:  # noqa: BLE001 - any network/archive failure becomes a UserError
        raise UserError(f"dataset={dataset}: download failed ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}). Offline, copy the "
                        f"files {', '.join(names)} into {folder.resolve()} and pass "
                        "dataset.download=false.") from exc


def gunzip_missing(folder: Path, names) -> list[str]:
    """For each of ``names`` missing in ``folder`` whose ``<name>.gz`` is there, write the
    decompressed file (to a temporary name, then renamed into place); returns the names
    written. A corrupt archive is a :class:`UserError` naming it."""
    written = []
    for name in _missing(folder, names):
        archive = folder / f"{name}.gz"
        if not archive.is_file():
            continue
        tmp = folder / f".{name}.tmp{os.getpid()}"
        try:
            with gzip.open(archive, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except (OSError, EOFError) as exc:
            tmp.unlink(missing_ok=True)
            raise UserError(f"cannot decompress {archive.resolve()} ({type(exc).__name__}: "
                            f"{exc}); replace it with a complete copy.") from exc
        os.replace(tmp, folder / name)
        written.append(name)
    if written:
        print(f"decompressed {', '.join(n + '.gz' for n in written)} in {folder.resolve()}",
              flush=True)
    return written


class _MNISTLike(ImageDataModule):
    """Shared code of MNIST and Fashion-MNIST: 1×28×28 (``pad`` pixels of background added on
    each side, e.g. ``pad=2`` for 32×32); held-out = the official test split."""

    folder_name = "MNIST"
    dataset_key = "mnist"
    num_classes = 10

    def __init__(self, root: str = "data", download: bool = False, pad: int = 0,
                 batch_size: int = 128, hflip: bool = False, num_workers: int = 0,
                 exact_max: int | None = 10_000, conditional: bool = False):
        super().__init__(batch_size, hflip, num_workers, exact_max, conditional)
        self.root = Path(str(root)).expanduser()
        self.download = bool(download)
        self.pad = int(pad)
        if self.pad < 0:
            raise UserError(f"dataset.pad must be >= 0, got {pad}")
        self.data_shape = (1, 28 + 2 * self.pad, 28 + 2 * self.pad)

    @property
    def raw_folder(self) -> Path:
        return self.root / self.folder_name / "raw"

    def _tv_class(self):
        import torchvision.datasets as tvd

        return getattr(tvd, self.folder_name)

    def prepare_data(self) -> None:
        if self.download and _missing(self.raw_folder, MNIST_FILES):
            cls = self._tv_class()
            _download(self.dataset_key, lambda: cls(str(self.root), train=True, download=True),
                      self.raw_folder, MNIST_FILES)

    def _load(self):
        self.prepare_data()
        if self.raw_folder.is_dir():
            gunzip_missing(self.raw_folder, MNIST_FILES)
        missing = _missing(self.raw_folder, MNIST_FILES)
        if missing:
            raise UserError(
                f"dataset={self.dataset_key}: files missing in {self.raw_folder.resolve()}: "
                f"{', '.join(missing)}. Expected the IDX files "
                f"{', '.join(MNIST_FILES)} (or their .gz) in <root>/{self.folder_name}/raw/ "
                f"(root is "
                f"dataset.root={str(self.root)!r}). Pass dataset.download=true to fetch them "
                "(needs internet), or copy them there.")
        cls = self._tv_class()
        try:
            train_set = cls(str(self.root), train=True, download=False)
            test_set = cls(str(self.root), train=False, download=False)
            train, test = train_set.data, test_set.data
            self._labels = (train_set.targets.long(), test_set.targets.long())
        except (RuntimeError, ValueError, TypeError, AssertionError) as exc:
            raise UserError(f"dataset={self.dataset_key}: cannot read the IDX files in "
                            f"{self.raw_folder.resolve()} ({type(exc).__name__}: {exc}). Are "
                            "they complete and uncompressed?") from exc
        train, test = train[:, None], test[:, None]  # (N, 1, 28, 28) uint8
        if self.pad:
            train = F.pad(train, (self.pad,) * 4)  # 0 = background black
            test = F.pad(test, (self.pad,) * 4)
        return train.contiguous(), test.contiguous()


class MNISTDataModule(_MNISTLike):
    """MNIST handwritten digits (60,000 train / 10,000 held-out), 1×28×28."""

    folder_name = "MNIST"
    dataset_key = "mnist"


class FashionMNISTDataModule(_MNISTLike):
    """Fashion-MNIST (60,000 train / 10,000 held-out), 1×28×28."""

    folder_name = "FashionMNIST"
    dataset_key = "fashion_mnist"


#: The only globals a CIFAR-10 python batch refers to (NumPy's array and dtype
#: reconstruction; ``_codecs.encode`` for byte strings pickled by Python 3, protocol 2).
CIFAR_PICKLE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})


class CifarUnpickler(pickle.Unpickler):
    """Unpickles plain containers, numbers, strings, bytes and NumPy arrays; any other global
    (a class or function a crafted file names, e.g. ``os.system``) is an
    ``UnpicklingError`` before it is looked up, so nothing in the file runs."""

    def find_class(self, module: str, name: str):
        if (module, name) not in CIFAR_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(
                f"it refers to {module}.{name}, which a CIFAR-10 batch never holds (only "
                "NumPy arrays, lists, dicts, numbers, strings and bytes); refused unread")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch -> images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64,
    read with :class:`CifarUnpickler`."""
    with open(path, "rb") as f:
        try:
            entry = CifarUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as exc:
            raise UserError(f"{path} is not a CIFAR-10 python batch: {exc}. Replace it with "
                            "the file from the official cifar-10-python.tar.gz.") from None
    if isinstance(entry, dict):  # keys are str (latin1) or bytes, by the pickling Python
        entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    data = np.asarray(entry["data"] if isinstance(entry, dict) else None)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError(f"{path} is not a CIFAR-10 python batch: expected 'data' of uint8 "
                        f"(N, 3072), found {data.dtype} {data.shape}")
    labels = np.asarray(entry.get("labels", ()), dtype=np.int64)
    if labels.shape != (data.shape[0],) or (
            labels.size and not 0 <= labels.min() <= labels.max() < 10):
        raise UserError(f"{path} is not a CIFAR-10 python batch: expected 'labels', "
                        f"{data.shape[0]} classes in 0..9, found {labels.shape[0]} values"
                        + (f" in [{labels.min()}, {labels.max()}]" if labels.size else ""))
    return data.reshape(-1, 3, 32, 32), labels


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 (50,000 train / 10,000 held-out = the test batch), 3×32×32, flips on by default
    (as in every published CIFAR-10 recipe)."""

    num_classes = 10

    def __init__(self, root: str = "data", download: bool = False,
                 verify_checksums: bool = False, batch_size: int = 128, hflip: bool = True,
                 num_workers: int = 0, exact_max: int | None = 10_000,
                 conditional: bool = False):
        super().__init__(batch_size, hflip, num_workers, exact_max, conditional)
        self.root = Path(str(root)).expanduser()
        self.download = bool(download)
        self.verify_checksums = bool(verify_checksums)
        self.data_shape = (3, 32, 32)

    @property
    def folder(self) -> Path:
        return self.root / CIFAR_FOLDER

    def prepare_data(self) -> None:
        if self.download and _missing(self.folder, CIFAR_FILES):
            from torchvision.datasets import CIFAR10

            _download("cifar10", lambda: CIFAR10(str(self.root), train=True, download=True),
                      self.folder, CIFAR_FILES)

    def _verify(self) -> None:
        from torchvision.datasets import CIFAR10
        from torchvision.datasets.utils import check_integrity

        sums = dict(CIFAR10.train_list + CIFAR10.test_list)
        sums[CIFAR10.meta["filename"]] = CIFAR10.meta["md5"]
        bad = [n for n, md5 in sums.items() if not check_integrity(str(self.folder / n), md5)]
        if bad:
            raise UserError(f"dataset=cifar10: MD5 checksum mismatch for {', '.join(bad)} in "
                            f"{self.folder.resolve()}; re-download (dataset.download=true after "
                            "deleting them) or pass dataset.verify_checksums=false.")

    def _load(self):
        self.prepare_data()
        missing = _missing(self.folder, CIFAR_FILES)
        if missing:
            raise UserError(
                f"dataset=cifar10: files missing in {self.folder.resolve()}: "
                f"{', '.join(missing)}. Expected the CIFAR-10 python version "
                f"(cifar-10-python.tar.gz, extracted): {', '.join(CIFAR_FILES)} in "
                f"<root>/{CIFAR_FOLDER}/ (root is dataset.root={str(self.root)!r}). Pass "
                "dataset.download=true to fetch it (needs internet), or extract the archive "
                "into root.")
        if self.verify_checksums:
            self._verify()
        try:
            batches = [read_cifar_batch(self.folder / n) for n in CIFAR_TRAIN]
            test, test_labels = read_cifar_batch(self.folder / "test_batch")
            train = np.concatenate([b[0] for b in batches])
            self._labels = (torch.from_numpy(np.concatenate([b[1] for b in batches])),
                            torch.from_numpy(test_labels))
        except (pickle.UnpicklingError, EOFError, KeyError) as exc:
            raise UserError(f"dataset=cifar10: cannot read the batches in "
                            f"{self.folder.resolve()} ({type(exc).__name__}: {exc}); are the "
                            "files complete?") from exc
        return torch.from_numpy(train), torch.from_numpy(test)
