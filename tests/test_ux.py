"""A researcher's day (issue 15): help that lists everything without importing torch, PNG
export, a quiet default run, the batched toy loader and the sync-free Gamma sampler."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import CONF, ROOT, run_script

# --- --help and --cfg job -------------------------------------------------------------------


def _run_entry_point(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``script args`` in a fresh interpreter that reports, at exit, whether torch or
    Lightning were imported."""
    code = ("import atexit, runpy, sys\n"
            "atexit.register(lambda: print('IMPORTED', sorted(m for m in ('torch', 'lightning')"
            " if m in sys.modules)))\n"
            f"sys.argv = [{script!r}, *{list(args)!r}]\n"
            f"runpy.run_path({script!r}, run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize(("script", "config"), [("train.py", "train"), ("sample.py", "sample")])
def test_help_lists_every_option_of_every_group_without_torch(script, config):
    from unified_ode.app.help import _defaults

    proc = _run_entry_point(script, "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "IMPORTED []" in out  # neither torch nor Lightning
    groups = _defaults(config)
    assert {"physics", "network", "solver", "dataset"} <= set(groups)
    for group, default in groups.items():
        assert re.search(rf"^{group}=<option>", out, flags=re.M), group
        for option in (p.stem for p in (CONF / group).glob("*.yaml")):
            mark = r"\*" if option == default else " "
            # one line per option: its mark, name and the first line of its YAML's comment
            assert re.search(rf"^  {mark} {option} +\S", out, flags=re.M), (group, option)
    assert "-sc install=bash" in out and "--cfg job" in out
    if config == "train":
        assert re.search(r"^  threads=1 +torch's CPU threads", out, flags=re.M)
        assert "digits_poisson" in out and "PFGM (Poisson field) on scikit-learn" in out


def test_cfg_job_composes_without_torch():
    proc = _run_entry_point("train.py", "--cfg", "job", "physics=ve", "network.width=64")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "IMPORTED []" in proc.stdout
    assert "_target_: unified_ode.physics.VEField" in proc.stdout
    assert "width: 64" in proc.stdout


def test_train_module_import_leaves_lightning_out():
    code = "import sys, unified_ode.app.train; print('lightning' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.stdout.strip() == "False", proc.stderr[-2000:]


# --- sample.py export=png -------------------------------------------------------------------


def _sample_in_process(out_dir, *overrides):
    from hydra import compose, initialize_config_dir

    from unified_ode.app.resolvers import register_resolvers
    from unified_ode.app.sample import run_task

    register_resolvers()
    args = [f"out_dir={out_dir}", *overrides]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return run_task(compose(config_name="sample", overrides=args), args, out_dir)


EXACT_DIGITS = ["network=exact", "physics=ve", "dataset=digits", "solver.steps=2"]


def test_export_png_writes_one_readable_png_per_image(tmp_path):
    from PIL import Image

    out = tmp_path / "s"
    _sample_in_process(out, *EXACT_DIGITS, "n=7", "batch_size=4", "export=png")
    stored = np.load(out / "samples.npz")["samples"]
    assert stored.shape == (7, 8, 8, 1) and stored.dtype == np.uint8
    files = sorted((out / "samples_png").glob("*.png"))
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(7)]
    for i, f in enumerate(files):
        with Image.open(f) as im:
            assert im.mode == "L" and im.size == (8, 8)
            np.testing.assert_array_equal(np.asarray(im), stored[i, :, :, 0])
    assert len(np.unique(stored)) > 1


def test_export_png_refuses_points_and_unknown_formats(tmp_path):
    from unified_ode.errors import UserError

    with pytest.raises(UserError, match="holds points: they are in samples.npz"):
        _sample_in_process(tmp_path / "a", "network=exact", "physics=ve", "n=4",
                           "solver.steps=2", "export=png")
    with pytest.raises(UserError, match="export='jpg'; choose one of none, png"):
        _sample_in_process(tmp_path / "b", *EXACT_DIGITS, "n=2", "export=jpg")
    assert not (tmp_path / "a" / "samples.npz").exists()


def test_single_batch_progress_bar_leaves_the_samples_unchanged(tmp_path):
    """One batch shows a bar over network evaluations (a forward hook); the samples must be
    those of the same batch drawn without it (batch 0 of a two-batch job)."""
    one = _sample_in_process(tmp_path / "one", *EXACT_DIGITS, "n=4", "batch_size=4")
    two = _sample_in_process(tmp_path / "two", *EXACT_DIGITS, "n=8", "batch_size=4")
    assert one["nfe"] == [3] and two["nfe"] == [3, 3]
    np.testing.assert_array_equal(np.load(tmp_path / "one" / "samples.npz")["samples"],
                                  np.load(tmp_path / "two" / "samples.npz")["samples"][:4])


def test_solver_progress_bar_never_changes_outputs():
    """The per-step bar of single-batch sampling (Solver.solve(progress=True)) is display only."""
    from unified_ode.parametrisation import ProbabilityFlow
    from unified_ode.physics import VEField
    from unified_ode.solvers import Dopri5, Heun

    field = VEField()
    flow = ProbabilityFlow.exact(field, torch.randn(6, 2, dtype=torch.float64))
    x = field.sample_prior(5, (2,), generator=torch.Generator().manual_seed(0),
                           dtype=torch.float64)
    for solver in (Heun(steps=6), Dopri5(rtol=1e-3, atol=1e-3)):
        plain = solver.solve(flow, x, solver.time_grid(field))
        shown = solver.solve(flow, x, solver.time_grid(field), progress=True)
        assert torch.equal(plain.x, shown.x) and plain.nfe == shown.nfe


# --- image grids ----------------------------------------------------------------------------


def test_grid_tiles_are_square_for_square_images():
    from unified_ode.viz.images import grid_array

    images = np.zeros((10, 8, 8, 1), dtype=np.uint8)
    grid = grid_array(images, nrow=5, pad=1)  # scale 6: 48-pixel tiles
    assert grid.shape == (2 * 49 + 1, 5 * 49 + 1, 1)
    tile = grid[1:49, 1:49, 0]
    assert tile.shape == (48, 48) and (tile == 0).all()


def test_panels_put_equal_pixel_grids_side_by_side_under_titles():
    from unified_ode.viz.images import grid_array, panels_array

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    b = rng.integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    out = panels_array([("training", a), ("generated\nNFE 35", b)], nrow=2, gap=10,
                       title_height=20)
    grid = grid_array(a, nrow=2)  # 2 x 2 tiles of 48 x 48 (scale 6), pad 1
    assert out.dtype == np.uint8 and out.shape == (40 + 99, 99 + 10 + 99, 3)
    np.testing.assert_array_equal(out[40:, :99, 0], grid[:, :, 0])  # left panel, exact pixels
    np.testing.assert_array_equal(out[40:, 109:, 0], grid_array(b, nrow=2)[:, :, 0])
    tile = out[41:89, 110:158, 0]  # first generated tile: every source pixel a 6 x 6 block
    np.testing.assert_array_equal(tile, np.kron(b[0, :, :, 0], np.ones((6, 6), np.uint8)))
    assert (out[:40] < 128).any()  # the titles are drawn


# --- the batched toy loader -----------------------------------------------------------------


def test_toy_loader_fetches_whole_batches_of_training_rows():
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    from unified_ode.data.toy2d import Toy2DDataModule

    dm = Toy2DDataModule(n_train=1000, batch_size=64)
    data = dm.train_tensor()
    loader = dm.train_dataloader()
    batches = [b[0] for b in loader]
    assert len(batches) == 1000 // 64 and all(b.shape == (64, 2) for b in batches)
    rows = torch.cat(batches)
    # every row is a training row, none twice within an epoch (a permutation, drop_last)
    idx = torch.cdist(rows, data).argmin(1)
    assert torch.equal(data[idx], rows) and idx.unique().numel() == rows.shape[0]
    # Lightning's DDP swaps in a DistributedSampler and keeps batch_size and collate_fn
    ddp = DataLoader(loader.dataset, batch_size=64, sampler=DistributedSampler(
        loader.dataset, num_replicas=2, rank=1, shuffle=True, seed=0, drop_last=True),
        collate_fn=loader.collate_fn, drop_last=True)
    assert all(b[0].shape == (64, 2) for b in ddp) and len(ddp) == 500 // 64


def test_toy_set_smaller_than_a_batch_is_one_batch_not_an_empty_epoch():
    """With drop_last, 100 points in batches of 4096 would give epochs without a batch, and
    a max_steps run would never end: the set becomes one batch of all its points."""
    from unified_ode.data.toy2d import Toy2DDataModule

    (batch,) = [b[0] for b in Toy2DDataModule(n_train=100, batch_size=4096).train_dataloader()]
    assert batch.shape == (100, 2)
    exact = Toy2DDataModule(n_train=128, batch_size=64).train_dataloader()
    assert len(exact) == 2


# --- the Gamma sampler ----------------------------------------------------------------------


@pytest.mark.parametrize("seeded", [True, False], ids=["generator", "global-rng"])
@pytest.mark.parametrize("alpha", [0.5, 1.0, 64.0])
def test_gamma_sampler_draws_the_gamma_law(alpha, seeded):
    """Both samplers (seeded rejection loop; torch's sync-free kernel for training draws)."""
    from scipy import stats

    from unified_ode.physics.noise import sample_gamma

    def draw():
        if seeded:
            return sample_gamma(alpha, 100_000, generator=torch.Generator().manual_seed(1),
                                dtype=torch.float64).numpy()
        torch.manual_seed(1)
        return sample_gamma(alpha, 100_000, dtype=torch.float64).numpy()

    x = draw()
    assert stats.kstest(x, stats.gamma(alpha).cdf).pvalue > 1e-3
    # the lower tail, which sets the Student-t / Cauchy prior's far-out radii
    q = stats.gamma(alpha).ppf(1e-3)
    assert abs((x < q).mean() - 1e-3) < 5 * np.sqrt(1e-3 / x.size)
    assert np.array_equal(x, draw())  # reproducible


#: ``sample_gamma(0.5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)`` as
#: computed by the code of commit 859797a (before the sampler was split in two).
EARLIER_GAMMA_DRAWS = [1.2667202680274248, 0.07290771371618014, 0.008413314199613076,
                       0.05922295816820102]


def test_seeded_gamma_draws_are_those_of_earlier_versions():
    """The seeded sampler's draws are part of every seeded Student-t prior draw (old runs'
    samples): the first draws of seed 0, as the rejection loop has always produced them."""
    from unified_ode.physics.noise import sample_gamma

    x = sample_gamma(0.5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    np.testing.assert_allclose(x.numpy(), EARLIER_GAMMA_DRAWS, rtol=1e-12)


# --- a quiet default run --------------------------------------------------------------------

QUIET_TINY = ["trainer.max_steps=30", "dataset.n_train=4096", "dataset.batch_size=128",
              "network.width=32", "network.depth=1", "solver.steps=4",
              "callbacks.metrics.n_samples=128", "trainer.val_check_interval=1000",
              "callbacks.figures.n_points=128"]
WARNING_TEXT = re.compile(r"warn|deprecat|tip:|litlogger|\.py:\d+: ", re.I)


#: An image run through the FID path: the Inception weights load (TorchScript, whose
#: deprecation warning must not show), reference features and FID/KID on 16 images.
#: The experiment's own batch size (25 batches an epoch, fewer than log_every_n_steps=50).
QUIET_DIGITS_FID = ["experiment=digits_poisson", "trainer.max_steps=2",
                    "network.model_channels=8", "network.num_blocks=1", "solver.steps=2",
                    "callbacks.metrics.n_samples=16", "callbacks.metrics.batch_size=16",
                    "callbacks.metrics.kid_subset_size=8", "callbacks.figures.n_images=4"]


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [QUIET_TINY, QUIET_DIGITS_FID], ids=["toy", "digits-fid"])
def test_default_run_stderr_has_no_warning_text(tmp_path, overrides):
    proc = run_script("train.py", *overrides, f"callbacks.metrics.cache_dir={tmp_path / 'cache'}",
                      f"hydra.run.dir={tmp_path / 'run'}")
    lines = [ln for ln in re.split(r"[\r\n]+", proc.stderr) if ln.strip()]
    noisy = [ln for ln in lines if WARNING_TEXT.search(ln) and "it/s" not in ln]
    assert noisy == []
    if "experiment=digits_poisson" in overrides:
        assert "reference features" in proc.stderr  # the FID path ran (its progress bar)
