"""bench/new_fields.py --smoke end to end (issue 17): the page, the printed floors equal a
direct data-vs-data measurement, a rerun reuses everything, a changed run is refused."""

import json

import pytest

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
    results = main(["--smoke", "--root", str(root), "--out", str(out)])
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


def test_rerun_reuses_and_changed_run_is_refused(smoke):
    root, out, _ = smoke
    marker = root / "final" / "checkerboard" / "ve" / "seed0" / "done.json"
    before = marker.stat().st_mtime_ns
    main(["--smoke", "--root", str(root), "--out", str(out)])
    assert marker.stat().st_mtime_ns == before
    info = json.loads(marker.read_text())
    info["overrides"] = [*info["overrides"], "optim.lr=0.5"]
    marker.write_text(json.dumps(info))
    (marker.parent / "scores.json").unlink()
    with pytest.raises(SystemExit, match="other overrides"):
        main(["--smoke", "--root", str(root), "--out", str(out)])
