"""Benchmarks of issue 12 run end to end at tiny sizes on the CPU: bench/gpu.py --dry-run (the
real model builders, the framework's training step vs a bare EDM loop, sampling at NFE 10/35)
and bench/solvers_trained.py on a stored run."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_gpu_benchmark_dry_run(tmp_path):
    from bench.gpu import main

    rows = main(["--dry-run", "--out", str(tmp_path / "gpu.md")])
    names = [r[0] for r in rows]
    assert any("bare EDM" in n for n in names) and any("NFE 35" in n for n in names)
    text = (tmp_path / "gpu.md").read_text()
    assert "images/s" in text and "ours / bare" in text


@pytest.mark.slow
def test_trained_solver_benchmark_smoke(tmp_path):
    """bench/solvers_trained.py end to end on a stored run (2-D points: SW/MMD instead of
    FID/KID): GITS grids fitted, ours and k-diffusion on the same noise, table written."""
    import json

    from bench.solvers_trained import main
    from tests.conftest import ROOT

    out = tmp_path / "trained"
    main(["--runs", str(ROOT / "tests/fixtures/runs_v0/pfgm"), "--n", "32", "--seeds", "2",
          "--fit-n", "8", "--fine-points", "8", "--nfes", "4", "--extractor", "random",
          "--out", str(out), "--threads", "1", "--parts", str(tmp_path / "parts")])
    res = json.loads(out.with_suffix(".json").read_text())[0]
    assert set(res["scores"]) >= {"ipndm", "ipndm+gits", "unipc+gits", "ipndm+opt",
                                  "unipc+opt", "ipndm+gits+afs", "ipndm+opt+afs"}
    # +afs runs on the GITS grid of one step more (fitted too): NFE 4 on a 5-step grid
    assert len(res["grids"]["gits@5"]) == len(res["grids"]["gits@4"]) + 1
    assert len(res["scores"]["ipndm"]["4"]) == 2
    assert "ratio ours/k" in out.with_suffix(".md").read_text()
    # resumable: a rerun with a subset reuses every stored grid and score (same numbers)
    main(["--runs", str(ROOT / "tests/fixtures/runs_v0/pfgm"), "--n", "32", "--seeds", "1",
          "--fit-n", "8", "--fine-points", "8", "--nfes", "4", "--extractor", "random",
          "--out", str(out), "--threads", "1", "--parts", str(tmp_path / "parts"),
          "--methods", "unipc+opt", "k_dpmpp_2m", "--reference-nfe", "8"])
    again = json.loads(out.with_suffix(".json").read_text())[0]
    assert again["scores"]["unipc+opt"]["4"] == res["scores"]["unipc+opt"]["4"][:1]
    assert set(again["scores"]) == {"unipc+opt", "k_dpmpp_2m"}
    # the converged reference (ipndm, 8 steps): scored once per seed, beside the table
    ref = again["reference"]
    assert ref["nfe"] == 8 and [e["seed"] for e in ref["scores"]] == [0]
    text = out.with_suffix(".md").read_text()
    assert "reference: ipndm NFE 8" in text and "lowest reachable ratio" in text
    # --report-only: the same table from the stored scores, nothing computed
    main(["--runs", str(ROOT / "tests/fixtures/runs_v0/pfgm"), "--n", "32", "--seeds", "2",
          "--nfes", "4", "--extractor", "random", "--out", str(tmp_path / "report"),
          "--parts", str(tmp_path / "parts"), "--report-only", "--reference-nfe", "8",
          "--methods", "ipndm", "unipc+opt", "k_dpmpp_2m"])
    report = json.loads((tmp_path / "report.json").read_text())[0]
    assert report["scores"]["ipndm"] == res["scores"]["ipndm"]
    assert report["scores"]["unipc+opt"] == res["scores"]["unipc+opt"]
    assert report["reference"] == ref  # seed 1's reference was never scored: not invented


@pytest.mark.slow
def test_trained_benchmark_refines_a_stored_grid_to_the_same_opt_grid(tmp_path):
    """A stored GITS grid that lacks a ``+opt`` grid is refined, not fitted again: the
    ``+opt`` grid equals the one a single run fitting everything gives."""
    import json

    from bench.solvers_trained import main
    from tests.conftest import ROOT

    common = ["--runs", str(ROOT / "tests/fixtures/runs_v0/pfgm"), "--n", "16", "--seeds", "1",
              "--fit-n", "8", "--fine-points", "8", "--nfes", "4", "--extractor", "random",
              "--threads", "1"]
    for parts, methods in (("one", ["ipndm+gits", "ipndm+opt"]),
                           ("two", ["ipndm+gits"]), ("two", ["ipndm+opt"])):
        main([*common, "--out", str(tmp_path / parts), "--parts", str(tmp_path / parts),
              "--methods", *methods])
    grids = {p: json.loads(next((tmp_path / p).glob("*/grids-*.json")).read_text())["grids"]
             for p in ("one", "two")}
    assert grids["one"] == grids["two"] and set(grids["two"]) == {"gits", "ipndm+opt"}


@pytest.mark.slow
def test_solver_diagnosis_splits_the_error_by_training_point():
    """bench/solvers_diag.py on digits (exact VE field): every solver's row; the squared error
    of the samples that end on the reference's training point plus that of the switched ones
    adds up to the total (rest² (1 − moved) = rms² (1 − share))."""
    from bench.solvers_diag import main

    rows = main(["--field", "ve", "--data", "digits", "--nfe", "4", "--n", "24"])
    assert [r[0] for r in rows][:3] == ["ipndm", "unipc", "ipndm+gits"]
    for name, err, moved, rest, share in rows:
        assert 0 <= moved <= 1 and 0 <= share <= 1 and err > 0, name
        assert rest**2 * (1 - moved) == pytest.approx(err**2 * (1 - share), rel=1e-9,
                                                      abs=1e-15), name
