"""The image side: U-Nets × image data sets (a real training step and a sampling call each),
the real CIFAR-10 / MNIST loaders on files synthesised in their on-disk formats, the offline
errors for missing files, sample.py on an image run, train.py with the CIFAR-10 PFGM++ recipe,
the DDPM++ / NCSN++ parameter counts, and bf16 autocast / channels_last forward passes.

Everything runs on one CPU thread (``torch`` and the ``train.py``/``sample.py`` subprocesses):
on a shared 2-core machine more threads are slower, not faster.
"""

from __future__ import annotations

import re

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import CONF, compose_config, run_script
from tests.image_files import write_cifar10, write_mnist
from unified_ode.app.build import build_module
from unified_ode.data.torchvision_sets import CIFAR_FILES, MNIST_FILES
from unified_ode.errors import UserError
from unified_ode.solvers import Euler

NETWORKS = ["ddpmpp", "ncsnpp", "unet_small"]
DATASETS = ["digits", "faces", "mnist", "fashion_mnist", "cifar10", "image_folder"]
#: Two levels, width 8, one block: the smallest U-Net with every part (the attention
#: resolutions are the second level of 8x8, 28x28 and 32x32 images).
TINY_NET = ["network.model_channels=8", "network.channel_mult=[1,2]", "network.num_blocks=1",
            "network.attn_resolutions=[4,14,16]", "network.dropout=0.1"]
DATA_SHAPES = {"digits": (1, 8, 8), "faces": (1, 8, 8), "mnist": (1, 28, 28),
               "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32), "image_folder": (3, 8, 8)}
#: The ddpmpp / ncsnpp configs at CIFAR-10 size (EDM's channel_mult [2, 2, 2]).
DDPMPP_CIFAR_PARAMS = 55_732_739
NCSNPP_CIFAR_PARAMS = 56_395_523


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setenv("MKL_NUM_THREADS", "1")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    """A data root with CIFAR-10, MNIST and Fashion-MNIST files in their real formats, plus a
    folder of PNGs; returns ``(root, written arrays)``."""
    from PIL import Image

    root = tmp_path_factory.mktemp("data")
    written = {"cifar10": write_cifar10(root, per_batch=4, seed=3),
               "mnist": write_mnist(root, "MNIST", n_train=12, n_test=6, seed=1),
               "fashion_mnist": write_mnist(root, "FashionMNIST", n_train=10, n_test=4, seed=2)}
    folder = root / "images"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    pngs = {}
    for name, (h, w), mode in [("a.png", (8, 8), "RGB"), ("b.png", (10, 14), "RGB"),
                               ("sub/c.png", (16, 9), "L"), ("d.PNG", (12, 12), "RGBA"),
                               ("e.png", (8, 8), "RGB"), ("f.png", (20, 11), "RGB")]:
        channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
        arr = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        Image.fromarray(arr[:, :, 0] if channels == 1 else arr, mode).save(folder / name)
        pngs[name] = arr
    (folder / "notes.txt").write_text("not an image\n")
    written["image_folder"] = pngs
    return root, written


def dataset_overrides(dataset: str, root) -> list[str]:
    common = [f"dataset={dataset}", "dataset.batch_size=4"]
    extra = {"faces": ["dataset.size=8"],
             "mnist": [f"dataset.root={root}"],
             "fashion_mnist": [f"dataset.root={root}"],
             "cifar10": [f"dataset.root={root}"],
             "image_folder": [f"dataset.path={root / 'images'}", "dataset.size=8",
                              "dataset.heldout_fraction=0.2"]}
    return common + extra.get(dataset, [])


def fit_one_step(module, datamodule) -> None:
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 1


# --- 1. every network × every image data set -------------------------------------------------

@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("network", NETWORKS)
def test_network_and_dataset_train_one_step_and_sample(network, dataset, image_root):
    root, _ = image_root
    cfg = compose_config("train", [f"network={network}", *TINY_NET,
                                   *dataset_overrides(dataset, root)])
    module, datamodule = build_module(cfg)
    assert tuple(datamodule.data_shape) == DATA_SHAPES[dataset]
    before = [p.detach().clone() for p in module.model.parameters()]
    fit_one_step(module, datamodule)
    after = list(module.model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    changed = sum(not torch.equal(a, b) for a, b in zip(before, after))
    assert changed > 0, "the optimiser step changed no parameter"

    result = module.sample(3, solver=Euler(steps=2), generator=torch.Generator().manual_seed(0))
    assert result.x.shape == (3, *DATA_SHAPES[dataset])
    assert result.x.dtype == torch.float32
    assert torch.isfinite(result.x).all()
    assert result.nfe == 2


# --- 2. the real loaders read the synthesised files -----------------------------------------

def _as_bytes(x: torch.Tensor) -> np.ndarray:
    """``[-1, 1]`` floats back to the uint8 they came from (exact for ``v/127.5 − 1``)."""
    return ((x.double() + 1) * 127.5).round().to(torch.uint8).numpy()


def _sorted_rows(a: np.ndarray) -> list[bytes]:
    return sorted(row.tobytes() for row in np.ascontiguousarray(a))


@pytest.mark.parametrize("dataset", ["cifar10", "mnist", "fashion_mnist"])
def test_real_loader_reads_the_synthesised_bytes(dataset, image_root):
    root, written = image_root
    cfg = compose_config("train", [f"dataset={dataset}", f"dataset.root={root}",
                                   "dataset.exact_max=null", "dataset.hflip=false"])
    dm = instantiate(cfg.dataset)
    dm.setup("fit")
    train, held = dm.train_tensor(), dm.heldout()
    expected_train = written[dataset]["train"]
    expected_test = written[dataset]["test"]
    if dataset != "cifar10":  # IDX: (N, 28, 28) -> (N, 1, 28, 28)
        expected_train, expected_test = expected_train[:, None], expected_test[:, None]
    assert train.shape == expected_train.shape and held.shape == expected_test.shape
    assert train.dtype == torch.float32
    assert train.min() >= -1 and train.max() <= 1
    # exact: v -> v / 127.5 - 1 in float32, and back
    want = torch.from_numpy(expected_train).float() / 127.5 - 1
    assert torch.equal(train, want)
    np.testing.assert_array_equal(_as_bytes(train), expected_train)
    np.testing.assert_array_equal(_as_bytes(held), expected_test)

    # the training batches are the same images (shuffled), still exact
    dm.batch_size = len(expected_train)
    (batch,) = list(dm.train_dataloader())
    assert batch.shape == expected_train.shape
    assert _sorted_rows(_as_bytes(batch)) == _sorted_rows(expected_train)


def test_cifar10_flips_and_mnist_padding(image_root):
    root, written = image_root
    cfg = compose_config("train", ["dataset=cifar10", f"dataset.root={root}",
                                   "dataset.batch_size=20"])
    dm = instantiate(cfg.dataset)  # hflip: true by default
    dm.setup("fit")
    torch.manual_seed(5)
    (batch,) = list(dm.train_dataloader())
    imgs = _as_bytes(batch)
    originals = set(_sorted_rows(written["cifar10"]["train"]))
    flipped = set(_sorted_rows(written["cifar10"]["train"][..., ::-1]))
    kinds = [(r.tobytes() in originals, r.tobytes() in flipped) for r in imgs]
    assert all(o or f for o, f in kinds)
    assert any(f and not o for o, f in kinds) and any(o and not f for o, f in kinds)

    cfg = compose_config("train", ["dataset=mnist", f"dataset.root={root}", "dataset.pad=2"])
    dm = instantiate(cfg.dataset)
    assert dm.data_shape == (1, 32, 32)
    x = _as_bytes(dm.heldout())
    assert x.shape == (6, 1, 32, 32)
    np.testing.assert_array_equal(x[:, 0, 2:30, 2:30], written["mnist"]["test"])
    assert (x[:, :, :2] == 0).all() and (x[:, :, :, 30:] == 0).all()


def test_image_folder_reads_every_png(image_root):
    root, written = image_root
    cfg = compose_config("train", ["dataset=image_folder", f"dataset.path={root / 'images'}",
                                   "dataset.size=8", "dataset.heldout_fraction=0",
                                   "dataset.exact_max=null"])
    dm = instantiate(cfg.dataset)
    assert dm.num_train == 6  # the .txt is skipped, sub/ and .PNG are found
    x = dm.train_tensor()
    assert x.shape == (6, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    # files are sorted: a.png is first; an 8x8 RGB file is read unchanged
    np.testing.assert_array_equal(_as_bytes(x[0]).transpose(1, 2, 0),
                                  written["image_folder"]["a.png"])


# --- 3. offline errors name the folder and the files --------------------------------------

def test_missing_cifar10_names_folder_and_files(tmp_path):
    root = tmp_path / "empty"
    cfg = compose_config("train", ["dataset=cifar10", f"dataset.root={root}"])
    assert cfg.dataset.download is False
    dm = instantiate(cfg.dataset)
    with pytest.raises(UserError) as err:
        dm.setup("fit")
    msg = str(err.value)
    folder = (root / "cifar-10-batches-py").resolve()
    assert f"files missing in {folder}: {', '.join(CIFAR_FILES)}." in msg
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                 "data_batch_5", "test_batch", "batches.meta"]:
        assert name in msg
    assert "dataset.download=true" in msg
    assert not folder.exists()  # nothing was created

    # one file missing: only that one is named as missing
    write_cifar10(root, per_batch=2)
    (folder / "data_batch_4").unlink()
    with pytest.raises(UserError, match=re.escape(f"files missing in {folder}: data_batch_4. ")):
        instantiate(cfg.dataset).setup("fit")


@pytest.mark.parametrize(("dataset", "folder_name"), [("mnist", "MNIST"),
                                                      ("fashion_mnist", "FashionMNIST")])
def test_missing_mnist_names_folder_and_files(tmp_path, dataset, folder_name):
    root = tmp_path / "empty"
    cfg = compose_config("train", [f"dataset={dataset}", f"dataset.root={root}"])
    assert cfg.dataset.download is False
    with pytest.raises(UserError) as err:
        instantiate(cfg.dataset).setup("fit")
    msg = str(err.value)
    raw = (root / folder_name / "raw").resolve()
    assert f"files missing in {raw}: {', '.join(MNIST_FILES)}." in msg
    for name in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]:
        assert name in msg
    assert f"<root>/{folder_name}/raw/" in msg and "dataset.download=true" in msg


# --- 4. sample.py on an image run -----------------------------------------------------------

TINY_DIGITS_RUN = ["experiment=digits_poisson", "trainer.max_steps=2", "dataset.batch_size=16",
                   "network.model_channels=8", "network.num_blocks=1", "solver.steps=2",
                   "callbacks.metrics.extractor=random", "callbacks.metrics.n_samples=16",
                   "callbacks.metrics.batch_size=16",
                   "callbacks.figures.n_images=4"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("digits")
    run_dir = base / "run"
    run_script("train.py", *TINY_DIGITS_RUN, f"callbacks.metrics.cache_dir={base / 'cache'}",
               f"hydra.run.dir={run_dir}")
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    return run_dir


def _sample_in_process(run_dir, out_dir, *overrides):
    """sample.py's code path without the subprocess: compose sample.yaml, run_task."""
    from hydra import compose, initialize_config_dir

    from unified_ode.app.sample import register_resolvers, run_task

    register_resolvers()
    args = [f"run={run_dir}", f"out_dir={out_dir}", *overrides]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        run_task(compose(config_name="sample", overrides=args), args, out_dir)
    return np.load(out_dir / "samples.npz")["samples"]


@pytest.mark.slow
def test_sample_py_writes_uint8_nhwc_images(digits_run, tmp_path):
    out = tmp_path / "s"
    proc = run_script("sample.py", f"run={digits_run}", "n=10", "batch_size=4",
                      "solver.steps=2", "interpolate=true", "interpolate_pairs=2",
                      "interpolate_steps=5", f"out_dir={out}")
    assert "NFE: 3" in proc.stdout  # Heun, 2 steps
    data = np.load(out / "samples.npz")
    samples = data["samples"]
    assert samples.dtype == np.uint8 and samples.shape == (10, 8, 8, 1)
    assert 0 <= samples.min() and samples.max() <= 255
    assert len(np.unique(samples)) > 1
    assert list(data["nfe"]) == [3, 3, 3]  # batches of 4, 4, 2
    assert float(data["temperature"]) == 1.0
    assert (out / "samples.png").stat().st_size > 0
    from PIL import Image

    with Image.open(out / "samples.png") as im:
        assert im.size[0] > 8 * 3 and im.size[1] > 8 * 3  # a grid, scaled up

    interp = np.load(out / "interpolation.npz")
    assert interp["samples"].dtype == np.uint8
    assert interp["samples"].shape == (2 * 5, 8, 8, 1)
    assert int(interp["pairs"]) == 2 and int(interp["steps"]) == 5
    assert (out / "interpolation.png").is_file()

    # batch seeds: the same seed and batch size regenerate the same batches, in a new process
    again = _sample_in_process(digits_run, tmp_path / "again", "n=8", "batch_size=4",
                               "solver.steps=2")
    np.testing.assert_array_equal(again, samples[:8])
    # a lower temperature draws other (shrunken) prior states: other images
    cold = _sample_in_process(digits_run, tmp_path / "cold", "n=4", "batch_size=4",
                              "solver.steps=2", "temperature=0.5")
    assert not np.array_equal(cold, samples[:4])


@pytest.mark.slow
def test_image_panels_put_samples_beside_training_images_in_square_tiles(digits_run, tmp_path):
    """bench/image_panels.py (the README's digits figure): 2 x 2 tiles of 8 x 8 images, each a
    48 x 48 square (one integer scale for both axes); the left panel is the training images'
    exact grid, the right one the run's seeded samples."""
    import importlib.util

    from PIL import Image

    from unified_ode.api import load_run
    from unified_ode.viz.images import grid_array, to_uint8_nhwc

    spec = importlib.util.spec_from_file_location("image_panels",
                                                  CONF.parent / "bench" / "image_panels.py")
    panels = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(panels)
    out = panels.main(["--run", str(digits_run), "--out", str(tmp_path / "p.png"), "--n", "4"])
    with Image.open(out) as im:
        arr = np.asarray(im.convert("RGB"))
    title = 2 * 28  # two title lines on the generated panel
    assert arr.shape == (title + 2 * 49 + 1, 2 * (2 * 49 + 1) + 24, 3)
    run = load_run(digits_run)
    run.datamodule.setup("fit")
    left = grid_array(to_uint8_nhwc(run.datamodule.train_tensor()[:4]))
    np.testing.assert_array_equal(arr[title:, :99, 0], left[:, :, 0])
    right = grid_array(to_uint8_nhwc(run.sample(4, seed=0, progress=False).x.clamp(-1, 1)))
    np.testing.assert_array_equal(arr[title:, 99 + 24:, 0], right[:, :, 0])
    with pytest.raises(SystemExit):  # an existing figure is not overwritten without --force
        panels.main(["--run", str(digits_run), "--out", str(out), "--n", "4"])


def test_sample_py_zero_temperature_is_a_clear_error(digits_run, tmp_path, capsys):
    """sample.py's error path in process (its main is ``friendly_errors`` around run_task; a
    subprocess would add ~20 s of imports): exit status 2, the message, no samples."""
    from unified_ode.errors import friendly_errors

    with pytest.raises(SystemExit) as exc, friendly_errors("sample.py"):
        _sample_in_process(digits_run, tmp_path / "t", "n=4", "temperature=0")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "sample.py: error: temperature must be positive, got 0.0" in err
    assert "Traceback" not in err
    assert not (tmp_path / "t" / "samples.npz").exists()


# --- 5. the CIFAR-10 PFGM++ recipe runs a fast_dev_run on synthesised files ----------------

@pytest.mark.slow
def test_cifar10_pfgmpp_fast_dev_run(image_root, tmp_path):
    """The full-size NCSN++ (56M parameters) for one batch of 2 images on CPU."""
    root, _ = image_root
    proc = run_script("train.py", "experiment=cifar10_pfgmpp", f"dataset.root={root}",
                      "trainer.fast_dev_run=true", "dataset.batch_size=2",
                      f"callbacks.metrics.cache_dir={tmp_path / 'cache'}",
                      f"hydra.run.dir={tmp_path / 'run'}")
    assert f"network: {NCSNPP_CIFAR_PARAMS:,} parameters, data shape (3, 32, 32)" in proc.stdout
    assert "physics=pfgmpp" in proc.stdout and "'D': 128.0" in proc.stdout
    assert "trained 1 steps" in proc.stdout


# --- 6. parameter counts, bf16 autocast, channels_last --------------------------------------

def _count(net: str, **overrides) -> int:
    cfg = compose_config("train", [f"network={net}"])
    model = instantiate(cfg.network, data_shape=[3, 32, 32], **overrides)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.slow
def test_cifar10_parameter_counts():
    n = _count("ddpmpp")
    assert abs(n - 56e6) / 56e6 < 0.02
    assert n == DDPMPP_CIFAR_PARAMS
    assert _count("ncsnpp") == NCSNPP_CIFAR_PARAMS


def _tiny_unet():
    cfg = compose_config("train", ["network=unet_small", "network.model_channels=16"])
    net = instantiate(cfg.network, data_shape=[3, 16, 16])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the zero-initialised output layers would make the output 0
        for p in net.parameters():
            if not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return net.eval()


def test_bf16_autocast_and_channels_last_match_fp32():
    net = _tiny_unet()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    c = torch.tensor([-2.0, 0.0, 1.0, 3.0])
    with torch.no_grad():
        ref = net(x, c)
        assert ref.abs().mean() > 1e-3  # a non-trivial output to compare
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x, c)
        net_cl = net.to(memory_format=torch.channels_last)
        x_cl = x.to(memory_format=torch.channels_last)
        cl = net_cl(x_cl, c)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cl_low = net_cl(x_cl, c)

    def rel(a):
        return ((a.float() - ref).norm() / ref.norm()).item()

    assert low.shape == cl.shape == cl_low.shape == ref.shape
    for out in (low, cl, cl_low):
        assert torch.isfinite(out).all()
    assert rel(low) < 0.05 and rel(cl_low) < 0.05  # bf16: ~3 significant digits per op
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-5)  # same fp32 math


def test_unet_rejects_sizes_the_levels_cannot_halve():
    from unified_ode.networks import UNet

    with pytest.raises(ValueError, match="image size 10x10 is not divisible by 4"):
        UNet([1, 10, 10], model_channels=8, channel_mult=[1, 2, 2])  # 3 levels
    UNet([1, 12, 12], model_channels=8, channel_mult=[1, 2, 2], attn_resolutions=[])
