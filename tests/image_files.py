"""Writers of small image data sets in the real on-disk formats (for tests and smoke runs).

* CIFAR-10 python version: ``<root>/cifar-10-batches-py/data_batch_1..5, test_batch,
  batches.meta``, each batch a pickled dict with ``data`` (``(N, 3072)`` uint8, R, G, B planes of
  32×32 row-major) and ``labels``; the meta file holds ``label_names``.
* MNIST / Fashion-MNIST: IDX files ``<root>/<MNIST|FashionMNIST>/raw/
  {train,t10k}-{images-idx3,labels-idx1}-ubyte`` (or, ``gz=True``, only their gzipped ``.gz``
  versions, as the official mirrors serve them): a big-endian header (magic ``0x0803`` for
  uint8 3-D images, ``0x0801`` for uint8 1-D labels, then the sizes as 4-byte big-endian ints)
  followed by the raw bytes.

Run as a script to write a CIFAR-10 folder: ``python -m tests.image_files <root> [per_batch]``.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import sys
from pathlib import Path

import numpy as np

CIFAR_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"]


def cifar_images(n: int, seed: int) -> np.ndarray:
    """``(n, 3, 32, 32)`` uint8 with structure (a colour gradient per image) and noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, 32)[None, None, None, :] * np.ones((1, 1, 32, 1))
    colour = rng.uniform(0, 255, (n, 3, 1, 1))
    img = colour * ramp + rng.normal(0, 20, (n, 3, 32, 32)) + 40
    return np.clip(img, 0, 255).astype(np.uint8)


def write_cifar10(root, per_batch: int = 8, seed: int = 0, bytes_keys: bool = False) -> dict:
    """Write a CIFAR-10 folder with ``per_batch`` images in each of the 6 batches (random
    labels in ``0..9``; ``bytes_keys``: the dicts' keys as ``bytes``, as a batch re-pickled
    after ``pickle.load(..., encoding="bytes")`` has them); returns the arrays written:
    ``{"train": (5·per_batch, 3, 32, 32), "test": (per_batch, 3, 32, 32), "train_labels":
    (5·per_batch,), "test_labels": (per_batch,)}``."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train, train_labels = [], []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        imgs = cifar_images(per_batch, seed * 10 + i)
        labels = rng.integers(0, 10, per_batch)
        entry = {"batch_label": f"{name} (synthetic)", "labels": [int(v) for v in labels],
                 "data": imgs.reshape(per_batch, -1),
                 "filenames": [f"img_{i}_{j}.png" for j in range(per_batch)]}
        if bytes_keys:
            entry = {k.encode(): v for k, v in entry.items()}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        if name == "test_batch":
            test, test_labels = imgs, labels
        else:
            train.append(imgs)
            train_labels.append(labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR_LABELS, "num_cases_per_batch": per_batch,
                     "num_vis": 3072}, f, protocol=2)
    return {"train": np.concatenate(train), "test": test,
            "train_labels": np.concatenate(train_labels), "test_labels": test_labels}


def _idx_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 | array.ndim)  # 0x08: unsigned byte
    header += b"".join(struct.pack(">I", s) for s in array.shape)
    return header + array.tobytes()


def write_mnist(root, folder: str = "MNIST", n_train: int = 20, n_test: int = 10,
                seed: int = 0, gz: bool = False) -> dict:
    """Write the four IDX files of an MNIST-format set under ``<root>/<folder>/raw/`` (``gz``:
    only their ``.gz`` versions); returns ``{"train": (n_train, 28, 28), "test": (n_test, 28,
    28)}`` uint8 and ``"train_labels"``, ``"test_labels"`` (uint8)."""
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        imgs = np.zeros((n, 28, 28), dtype=np.uint8)
        for k in range(n):  # a bright bar at a random row: images differ and are non-trivial
            r = rng.integers(4, 24)
            imgs[k, r:r + 3, 4:24] = 255
            imgs[k] = np.maximum(imgs[k], rng.integers(0, 30, (28, 28)).astype(np.uint8))
        labels = rng.integers(0, 10, n).astype(np.uint8)
        for name, array in ((f"{split}-images-idx3-ubyte", imgs),
                            (f"{split}-labels-idx1-ubyte", labels)):
            if gz:
                (raw / f"{name}.gz").write_bytes(gzip.compress(_idx_bytes(array)))
            else:
                (raw / name).write_bytes(_idx_bytes(array))
        key = "train" if split == "train" else "test"
        out[key], out[f"{key}_labels"] = imgs, labels
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1])
    written = write_cifar10(target, int(sys.argv[2]) if len(sys.argv) > 2 else 8)
    print(f"wrote CIFAR-10 format files to {target / 'cifar-10-batches-py'}: "
          f"{len(written['train'])} train, {len(written['test'])} test images")
