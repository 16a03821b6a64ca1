"""bench/new_fields.py --smoke end to end (issue 17): the page, the printed floors equal a
direct data-vs-data measurement (toy points, and digits images in a feature space), a rerun
reuses everything, a changed run is refused."""

import json

import pytest
import torch

from bench.fieldstudy.cli import main
from bench.fieldstudy.presets import PRESETS
from bench.fieldstudy.runs import FLOOR_SEED, REF_SEED
from unified_ode.data.toy2d import toy_samples
from unified_ode.metrics import mmd_rbf, precision_recall, sliced_wasserstein

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("new_fields")
    out = root / "page.md"
    results = main(["--smoke", "--jobs", "1", "--root", str(root), "--out", str(out)])
    return root, out, results


def test_page_tables_and_json(smoke):
    root, out, results = smoke
    text = out.read_text()
    assert "| ve |" in text and "| **exppower** |" in text and "floor (data vs data)" in text
    data = json.loads(out.with_suffix(".json").read_text())
    entry = data["results"]["checkerboard"]["fields"]["exppower"]
    assert set(entry["seeds"]) == {"0", "1"}
    cell = entry["seeds"]["0"]["cells"]["nfe10"]
    assert cell["nfe"] <= 10 and entry["seeds"]["0"]["cells"]["nfe35"]["nfe"] <= 35
    assert 0 <= cell["precision"] <= 1 and 0 <= cell["recall"] <= 1
    assert (out.parent / "page_checkerboard_diagnostics.png").is_file()
    diag = entry["diagnostics"]
    assert all(0 <= h <= 1 + 1e-9 for h in diag["entropy"])
    assert diag["entropy"][0] < diag["entropy"][-1]  # sharp near the data, flat near the prior


def test_beta_slice_runs_every_beta_and_seed(smoke):
    """The exppower slice: every β of the preset with every seed at exppower's tuned knobs
    (β replaced), a table row per β and the figure."""
    root, out, results = smoke
    preset = PRESETS["smoke"]
    for ds in preset.datasets:
        sweep = results[ds]["sweep"]
        assert sweep["betas"] == [f"{b:g}" for b in preset.beta_sweep]
        assert all(set(sweep["runs"][b]) == {str(s) for s in preset.seeds}
                   for b in sweep["betas"])
        tuned = results[ds]["fields"]["exppower"]["tune"]["best_params"]
        assert sweep["params"] == {k: v for k, v in tuned.items() if k != "physics.beta"}
        done = json.loads((root / "sweep" / ds / "beta2" / "seed0" / "done.json").read_text())
        assert "physics.beta=2.0" in done["overrides"]
    assert ("points" == results["checkerboard"]["kind"]
            and "sw" in results["checkerboard"]["sweep"]["runs"]["1"]["0"]["cell"])
    assert all("val_bits" in r for runs in results["digits"]["sweep"]["runs"].values()
               for r in runs.values())
    text = out.read_text()
    assert "### checkerboard: β slice" in text and "| 2 |" in text
    assert "β chosen on validation bits/dim" in text
    assert (out.parent / "page_beta_slice.png").is_file()


def test_floor_is_a_direct_data_vs_data_measurement(smoke):
    _, _, results = smoke
    n, heavy = PRESETS["smoke"].n, PRESETS["smoke"].n_heavy
    ref = toy_samples("checkerboard", n, REF_SEED)
    other = toy_samples("checkerboard", n, FLOOR_SEED)
    floors = results["checkerboard"]["floors"]
    assert floors["sw"] == sliced_wasserstein(other, ref)
    assert abs(floors["mmd"] - mmd_rbf(other, ref, max_points=heavy)) < 1e-12
    pr = precision_recall(ref[:heavy], other[:heavy])
    assert (floors["precision"], floors["recall"]) == (pr["precision"], pr["recall"])


def test_stale_cells_are_rescored_and_bits_kept(smoke):
    """A cached cell scored on another number of points (an older preset) is scored again on
    the next run; the cached bits/dim is kept, not recomputed."""
    root, out, _ = smoke
    path = root / "final" / "checkerboard" / "exppower" / "seed1" / "scores.json"
    scores = json.loads(path.read_text())
    scores["cells"]["nfe10"]["n_heavy"] = 7
    scores["cells"]["nfe10"]["sw"] = -1.0
    scores["bits"]["mean"] = 123.0          # a marker: recomputing it would overwrite this
    path.write_text(json.dumps(scores))
    main(["--smoke", "--jobs", "1", "--root", str(root), "--out", str(out)])
    again = json.loads(path.read_text())
    assert again["cells"]["nfe10"]["n_heavy"] == PRESETS["smoke"].n_heavy
    assert again["cells"]["nfe10"]["sw"] > 0
    assert again["bits"]["mean"] == 123.0


def test_rerun_reuses_and_changed_run_is_refused(smoke):
    root, out, _ = smoke
    marker = root / "final" / "checkerboard" / "ve" / "seed0" / "done.json"
    before = marker.stat().st_mtime_ns
    main(["--smoke", "--jobs", "1", "--root", str(root), "--out", str(out)])
    assert marker.stat().st_mtime_ns == before
    info = json.loads(marker.read_text())
    info["overrides"] = [*info["overrides"], "optim.lr=0.5"]
    marker.write_text(json.dumps(info))
    (marker.parent / "scores.json").unlink()
    with pytest.raises(SystemExit, match="other overrides"):
        main(["--smoke", "--jobs", "1", "--root", str(root), "--out", str(out)])


def test_digits_leg_floor_and_cells(smoke):
    """The digits leg: FID/KID/precision/recall cells at both NFE budgets, and its floor is
    FID and precision/recall of one real half of the digits against the other, measured here
    directly from the images (the smoke preset's random conv features)."""
    from unified_ode.data.images import DigitsDataModule
    from unified_ode.metrics.conditional import image_scores
    from unified_ode.metrics.features import RandomConvFeatures

    _, out, results = smoke
    res = results["digits"]
    assert res["kind"] == "images" and res["primary"] == "fid"
    assert "| fid nfe10 | kid nfe10 |" in out.read_text()
    cells = res["fields"]["ve"]["seeds"][0]["cells"]
    assert cells["nfe10"]["nfe"] <= 10 and cells["nfe35"]["nfe"] <= 35
    assert all(c["fid"] > 0 and 0 <= c["precision"] <= 1 for c in cells.values())

    leg = PRESETS["smoke"].image
    dm = DigitsDataModule()
    everything = torch.cat([dm.train_tensor(), dm.heldout()])
    order = torch.randperm(len(everything), generator=torch.Generator().manual_seed(REF_SEED))
    half = len(everything) // 2
    a = everything[order[:half]][:leg.ref_n]
    b = everything[order[half:]][:leg.ref_n]
    extractor = RandomConvFeatures(in_channels=1)
    direct = image_scores(extractor, a, b, kid_subset_size=leg.kid_subset_size, sync=False)
    floors = res["floors"]
    assert abs(floors["fid"] - float(direct["fid"])) < 1e-6 * max(1.0, floors["fid"])
    pr = precision_recall(extractor(a).double(), extractor(b).double())
    assert abs(floors["precision"] - pr["precision"]) < 1e-9
    assert abs(floors["recall"] - pr["recall"]) < 1e-9


def test_digits_heldout_sets_are_dequantised_and_disjoint():
    """Tuning and test images come from the held-out split, each within half a grey level of
    a lattice value, and do not share an image."""
    from bench.fieldstudy.scores import DigitsReferences
    from unified_ode.data.images import DigitsDataModule

    refs = DigitsReferences(PRESETS["smoke"])
    held = DigitsDataModule().heldout()
    both = torch.cat([refs.val, refs.test])
    assert len(both) == len(held)
    noise = both - held
    assert float(noise.abs().max()) <= refs.LEVEL / 2 and float(noise.abs().mean()) > 0
    assert len(refs.val) == PRESETS["smoke"].image.n_val


def test_jobs_runs_units_in_parallel_and_writes_the_same_page(tmp_path):
    """``--jobs 2``: every (data set, field) unit as its own process, then one page with every
    data set and field; each unit's invocation is recorded as a unit."""
    out = tmp_path / "page.md"
    results = main(["--smoke", "--jobs", "2", "--root", str(tmp_path), "--out", str(out)])
    preset = PRESETS["smoke"]
    assert set(results) == set(preset.datasets)
    for ds in preset.datasets:
        assert set(results[ds]["fields"]) == set(preset.fields)
        assert all(len(e["seeds"]) == len(preset.seeds) for e in results[ds]["fields"].values())
    history = json.loads((tmp_path / "invocations.json").read_text())
    units = [h for h in history if h["unit"]]
    assert len(units) == len(preset.datasets) * len(preset.fields)
    assert [h["jobs"] for h in history if not h["unit"]] == [2]
    assert "| **exppower** |" in out.read_text()
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == sorted(
        f"{ds}-{f}.log" for ds in preset.datasets for f in preset.fields)


def test_report_only_without_a_study_refuses_and_keeps_the_page(tmp_path):
    out = tmp_path / "page.md"
    out.write_text("a page someone made")
    with pytest.raises(SystemExit, match="nothing to report"):
        main(["--smoke", "--report-only", "--root", str(tmp_path / "empty"), "--out", str(out)])
    assert out.read_text() == "a page someone made"
    assert not (tmp_path / "empty").exists()
