"""Class labels of the image data sets read from their real on-disk formats (issue 16): small
MNIST / Fashion-MNIST IDX files (plain and gzipped, torchvision's folder layout, read by
torchvision's own loaders), CIFAR-10 python batches (``str`` and ``bytes`` keys) and an image
folder with one sub-folder per class, each loaded through its Hydra config with
``dataset.conditional`` on and off."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import compose_config
from tests.image_files import write_cifar10, write_mnist
from unified_ode.errors import UserError


def datamodule(dataset: str, *overrides: str):
    cfg = compose_config("train", [f"dataset={dataset}", "dataset.hflip=false",
                                   "dataset.exact_max=null", *overrides])
    return instantiate(cfg.dataset)


def pairs(images: torch.Tensor, labels) -> list[tuple[bytes, int]]:
    """Sorted ``(image bytes, label)`` pairs of ``[-1, 1]`` images (exact back to uint8)."""
    raw = ((images.double() + 1) * 127.5).round().to(torch.uint8).numpy()
    return sorted((row.tobytes(), int(c)) for row, c in zip(raw, np.asarray(labels)))


def check_labelled(dm, train, test, train_labels, test_labels, shape):
    """``dm`` (conditional) yields exactly the written (image, label) pairs."""
    dm.setup("fit")
    assert dm.num_classes == 10 and dm.data_shape == shape
    assert dm.train_labels().dtype == torch.long
    assert torch.equal(dm.train_labels(), torch.as_tensor(train_labels, dtype=torch.long))
    assert torch.equal(dm.heldout_labels(), torch.as_tensor(test_labels, dtype=torch.long))
    dm.batch_size = len(train)
    (batch,) = list(dm.train_dataloader())
    x, y = batch
    assert x.shape == (len(train), *shape) and x.dtype == torch.float32
    assert -1 <= x.min() and x.max() <= 1
    assert y.shape == (len(train),) and y.dtype == torch.long
    assert pairs(x, y) == pairs(dm.train_tensor(), dm.train_labels())
    assert pairs(dm.train_tensor(), train_labels) == pairs(
        torch.from_numpy(train).float() / 127.5 - 1, train_labels)
    assert pairs(dm.heldout(), test_labels) == pairs(
        torch.from_numpy(test).float() / 127.5 - 1, test_labels)


@pytest.mark.parametrize("gz", [False, True], ids=["idx", "idx.gz"])
@pytest.mark.parametrize(("dataset", "folder"), [("mnist", "MNIST"),
                                                 ("fashion_mnist", "FashionMNIST")])
def test_mnist_formats_yield_image_label_pairs(tmp_path, dataset, folder, gz):
    written = write_mnist(tmp_path, folder, n_train=14, n_test=6, seed=4, gz=gz)
    dm = datamodule(dataset, f"dataset.root={tmp_path}", "dataset.conditional=true")
    check_labelled(dm, written["train"][:, None], written["test"][:, None],
                   written["train_labels"], written["test_labels"], (1, 28, 28))
    raw = tmp_path / folder / "raw"
    if gz:  # decompressed next to the archives, which stay
        assert sorted(p.name for p in raw.iterdir()) == sorted(
            [f"{n}-ubyte{s}" for n in ("train-images-idx3", "train-labels-idx1",
                                       "t10k-images-idx3", "t10k-labels-idx1")
             for s in ("", ".gz")])
    plain = datamodule(dataset, f"dataset.root={tmp_path}", "dataset.pad=2")
    plain.setup("fit")
    assert plain.num_classes == 10 and plain.data_shape == (1, 32, 32)
    batch = next(iter(plain.train_dataloader()))
    assert isinstance(batch, torch.Tensor) and batch.shape[1:] == (1, 32, 32)


def test_corrupt_mnist_archive_names_the_file(tmp_path):
    write_mnist(tmp_path, "MNIST", n_train=4, n_test=2, gz=True)
    archive = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    archive.write_bytes(archive.read_bytes()[:12])  # truncated download
    dm = datamodule("mnist", f"dataset.root={tmp_path}", "dataset.conditional=true")
    with pytest.raises(UserError, match=r"cannot decompress .*t10k-labels-idx1-ubyte\.gz"):
        dm.setup("fit")
    assert not (archive.parent / "t10k-labels-idx1-ubyte").exists()


@pytest.mark.parametrize("bytes_keys", [False, True], ids=["str-keys", "bytes-keys"])
def test_cifar10_batches_yield_image_label_pairs(tmp_path, bytes_keys):
    written = write_cifar10(tmp_path, per_batch=5, seed=7, bytes_keys=bytes_keys)
    dm = datamodule("cifar10", f"dataset.root={tmp_path}", "dataset.conditional=true")
    check_labelled(dm, written["train"], written["test"], written["train_labels"],
                   written["test_labels"], (3, 32, 32))
    plain = datamodule("cifar10", f"dataset.root={tmp_path}")
    assert isinstance(next(iter(plain.train_dataloader())), torch.Tensor)


def test_cifar10_labels_outside_the_classes_are_refused(tmp_path):
    import pickle

    write_cifar10(tmp_path, per_batch=3)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    with open(path, "rb") as f:
        entry = pickle.load(f)
    entry["labels"] = [0, 10, 2]
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)
    with pytest.raises(UserError, match=r"data_batch_3 is not a CIFAR-10.*in \[0, 10\]"):
        datamodule("cifar10", f"dataset.root={tmp_path}").setup("fit")


@pytest.mark.parametrize("cache", [False, True], ids=["decoded-per-batch", "cached"])
def test_image_folder_class_per_sub_folder(tmp_path, cache):
    from PIL import Image

    rng = np.random.default_rng(0)
    written = []
    for c, name in enumerate(["ant", "bee", "cow"]):  # sorted names -> classes 0, 1, 2
        (tmp_path / name / "nested").mkdir(parents=True)
        for i in range(3):
            img = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            sub = "nested/" if i == 2 else ""  # deeper files belong to the top sub-folder
            Image.fromarray(img).save(tmp_path / name / f"{sub}{i}.png")
            written.append((img.transpose(2, 0, 1), c))
    common = [f"dataset.path={tmp_path}", "dataset.size=6", "dataset.heldout_fraction=0.25",
              f"dataset.cache={str(cache).lower()}"]
    dm = datamodule("image_folder", *common, "dataset.conditional=true")
    assert dm.num_classes == 3
    dm.setup("fit")
    dm.batch_size = 9
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (7, 3, 6, 6) and y.dtype == torch.long  # 9 images, 2 held out
    everything = pairs(torch.from_numpy(np.stack([w[0] for w in written])).float() / 127.5 - 1,
                       [w[1] for w in written])
    held = pairs(dm.heldout(), dm.heldout_labels())
    assert sorted(pairs(x, y) + held) == everything
    plain = datamodule("image_folder", *common)
    assert plain.num_classes == 0
    assert isinstance(next(iter(plain.train_dataloader())), torch.Tensor)
