"""bench/case_study.py end to end on a tiny configuration: real train.py runs (subprocesses),
real scoring, the report's tables and figures, resuming, and the never-overwrite guard; the
worker pool (each item to exactly one worker) and the figures' styles and axis cap."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bench.study.plots import cap_of, field_styles
from bench.study.pool import run_each
from tests.conftest import CONF, run_script

FIELDS = ["poisson", "radial_general"]  # an affine field and one without a denoiser form
NFE = [3, 6]
N = 128


def study_args(tmp, *extra: str) -> list[str]:
    return ["--smoke", "--fields", ",".join(FIELDS), "--seeds", "0,1", "--steps", "12",
            "--nfe", ",".join(map(str, NFE)), "--solvers", "euler,dpmpp2m", "--n", str(N),
            "--likelihood-n", "16", "--probe-euler", "2,4", "--probe-noise", "0,0.2",
            "--out", str(tmp / "report" / "results.md"), "--root", str(tmp / "root"),
            *extra, "network.width=16", "network.depth=1", "dataset.n_train=1024",
            "dataset.n_heldout=256", "dataset.batch_size=128", "~callbacks.figures",
            "trainer.log_every_n_steps=4"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("case")
    proc = run_script("bench/case_study.py", *study_args(tmp), timeout=900)
    return tmp, proc


def md_tables(text: str) -> dict[str, list[list[str]]]:
    """``heading -> rows`` (header first) of every markdown table, keyed by the heading or the
    bold line above it."""
    tables, title, current = {}, None, None
    for line in text.splitlines():
        if line.startswith("#") or (line.startswith("**") and line.endswith("**")):
            title, current = line.strip("#* "), None
        elif line.startswith("|"):
            if current is None:
                current = tables.setdefault(title, [])
            if not line.startswith("|---"):
                current.append([c.strip() for c in line.strip("|").split("|")])
        else:
            current = None
    return tables


def numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", cell)]


@pytest.mark.slow
def test_case_study_report_tables(study):
    tmp, proc = study
    text = (tmp / "report" / "results.md").read_text()
    tables = md_tables(text)
    main = tables[f"sw@{N} of the best solver at each NFE budget"]
    assert main[0] == ["field", *[f"NFE ≤ {n}" for n in NFE], "adaptive", "bits/dim",
                       "train s"]
    assert [r[0] for r in main[1:]] == FIELDS
    for row in main[1:]:
        for cell in row[1:]:
            vals = numbers(cell)
            assert vals and all(math.isfinite(v) for v in vals), (row, cell)
        for cell in row[1:3]:  # mean ± std (two seeds) (solver NFE)
            assert re.fullmatch(r"\S+ ± \S+ \((euler|dpmpp2m) \d+\)", cell), cell
    # denoiser-form solvers do not apply to the non-affine field: n/a, not a crash
    dpm = tables["dpmpp2m"]
    assert dpm[2] == ["radial_general", "n/a", "n/a"]
    assert all(numbers(c) for c in dpm[1][1:])
    euler = tables["euler"]
    assert [numbers(c)[-1] for c in euler[1][1:]] == NFE  # measured NFE = the budget
    assert tables["Probe: Euler step count"][0] == ["field", "2 steps", "4 steps"]
    assert tables["Probe: noise on the network's prediction"][0] == ["field", "ε = 0",
                                                                      "ε = 0.2"]
    for name in ("nfe", "probes", "trajectories"):
        assert (tmp / "report" / f"results_checkerboard_{name}.png").stat().st_size > 5000
    assert "best at NFE ≤ 10:" in proc.stdout and "best quality" in proc.stdout
    for name in ("overview", "solvers"):
        assert (tmp / "report" / f"results_{name}.png").stat().st_size > 5000
    # the config's two workers shared the runs: each run was trained exactly once
    assert "2 worker processes sharing the runs" in proc.stdout
    runs = [f"checkerboard/{f}/seed{s}" for f in FIELDS for s in (0, 1)]
    assert sorted(re.findall(r"^\[train\] (\S+):", proc.stdout, re.M)) == sorted(runs)
    for run in runs:
        log = (tmp / "root" / "runs" / run / "case_study_train.out").read_text()
        assert log.count("run directory:") == 1, run


@pytest.mark.slow
def test_case_study_numbers_match_the_cached_scores_and_task_evaluate(study):
    """The table's mean ± std is that of the seeds' scores, the findings pick the minimum,
    and a cached score equals what ``sample.py task=evaluate`` computes for the same run."""
    tmp, _ = study
    raw = json.loads((tmp / "report" / "results.json").read_text())
    seeds = raw["results"]["checkerboard"]["poisson"]
    vals = [seeds[s]["cells"]["euler-s3"]["metrics"][f"sw@{N}"] for s in ("0", "1")]
    text = (tmp / "report" / "results.md").read_text()
    row = next(r for r in md_tables(text)["euler"] if r[0] == "poisson")
    mean, std, nfe = numbers(row[1])
    assert mean == pytest.approx(np.mean(vals), rel=1e-3)
    assert std == pytest.approx(np.std(vals, ddof=1), rel=2e-2)
    assert nfe == 3
    few = raw["findings"]["checkerboard"]["few_nfe"]
    assert few[0]["mean"] == min(f["mean"] for f in few)

    from hydra import compose, initialize_config_dir

    from unified_ode.app.sample import register_resolvers, run_task

    register_resolvers()
    run_dir = tmp / "root" / "runs" / "checkerboard" / "poisson" / "seed0"
    args = ["task=evaluate", f"run={run_dir}", "solver=euler", "solver.steps=3", f"n={N}",
            f"batch_size={N}", "seed=1234"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        result = run_task(compose(config_name="sample", overrides=args), args,
                          tmp / "evaluate")
    assert result["ema"] is True
    assert result["metrics"][f"sw@{N}"] == pytest.approx(vals[0], rel=1e-6)


@pytest.mark.slow
def test_case_study_resumes_and_never_overwrites(study):
    tmp, _ = study
    before = (tmp / "report" / "results.md").read_text()
    again = run_script("bench/case_study.py", *study_args(tmp), timeout=120)
    assert "[train]" not in again.stdout and "[eval]" not in again.stdout
    after = (tmp / "report" / "results.md").read_text()
    strip = re.compile(r"- Wall time.*\n")
    assert strip.sub("", after) == strip.sub("", before)
    # another budget on the same root is refused, nothing is retrained
    other = run_script("bench/case_study.py", *study_args(tmp, "--steps", "13"), timeout=120,
                       check=False)
    assert other.returncode != 0
    assert "never overwritten" in other.stderr
    marker = tmp / "root" / "runs" / "checkerboard" / "poisson" / "seed0"
    assert json.loads((marker / "case_study_train.json").read_text())["overrides"][-1] == \
        "seed=0"


@pytest.mark.slow
def test_unfinished_run_goes_through_the_apps_resume_guard(study, tmp_path):
    """A run directory with ``last.ckpt`` but no study marker is continued only when
    app/train.py's resume guard accepts the study's overrides for it."""
    import shutil

    from bench.study.plan import Run
    from bench.study.train import TRAIN_MARKER, check_reusable, train_command

    tmp, _ = study
    run_dir = tmp_path / "seed0"
    shutil.copytree(tmp / "root" / "runs" / "checkerboard" / "poisson" / "seed0", run_dir)
    (run_dir / TRAIN_MARKER).unlink()
    overrides = json.loads((tmp / "root" / "runs" / "checkerboard" / "poisson" / "seed0" /
                            TRAIN_MARKER).read_text())["overrides"]
    same = Run("checkerboard", "poisson", 0, overrides, run_dir)
    check_reusable(same)  # the same settings: continued ...
    assert train_command(same)[-1] == "resume=true"  # ... with resume=true
    other = Run("checkerboard", "ve", 0,
                [o.replace("physics=poisson", "physics=ve") for o in overrides], run_dir)
    with pytest.raises(SystemExit, match="(?s)physics.*never overwritten"):
        check_reusable(other)


@pytest.mark.slow
def test_figures_redrawn_from_saved_results(study, tmp_path):
    """--figures-from draws every metric figure from a saved results.json alone."""
    import shutil

    tmp, _ = study
    shutil.copy(tmp / "report" / "results.json", tmp_path / "results.json")
    run_script("bench/case_study.py", "--figures-from", str(tmp_path / "results.json"),
               timeout=120)
    for name in ("overview", "solvers", "checkerboard_nfe", "checkerboard_probes",
                 "checkerboard_trajectories"):  # the runs still exist: trajectories too
        assert (tmp_path / f"results_{name}.png").stat().st_size > 5000, name


def _record_call(job: tuple[str, str]) -> str:
    """A pool task: records (item, worker pid, its OMP_NUM_THREADS), then waits until two
    workers have recorded a call (so both take part), at most 120 s."""
    folder, item = Path(job[0]), job[1]
    if item == "boom":
        raise ValueError("boom")
    (folder / f"{item}.{os.getpid()}").write_text(os.environ.get("OMP_NUM_THREADS", ""))
    deadline = time.monotonic() + 120
    while len({p.suffix for p in folder.iterdir()}) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return item.upper()


@pytest.mark.slow  # two spawned workers import torch: ~30 s on 2 loaded cores
def test_pool_hands_each_item_to_exactly_one_worker(tmp_path, monkeypatch):
    """The process pool: every item runs once, in one of two worker processes (both take
    part), each with OMP_NUM_THREADS = cores // 2; results keep the items' order; a failing
    item's result comes from on_error and the others still run."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    items = [f"r{k}" for k in range(6)]
    jobs = [(str(tmp_path), i) for i in items] + [(str(tmp_path), "boom")]
    out = run_each(_record_call, jobs, 2, on_error=lambda job, exc: f"failed: {exc}")
    assert out == [i.upper() for i in items] + ["failed: boom"]
    calls = [p.name.split(".") for p in tmp_path.iterdir()]
    assert sorted(item for item, _ in calls) == items  # each item exactly once
    assert len({pid for _, pid in calls}) == 2 and str(os.getpid()) not in {p for _, p in calls}
    threads = {p.read_text() for p in tmp_path.iterdir()}
    assert threads == {str(max(1, (os.cpu_count() or 1) // 2))}


SPLICE_SCRIPT = """
import multiprocessing
from bench.study.util import log

def write(tag, start):
    start.wait()  # both processes write at the same time
    for i in range(2000):
        log(f"[train] {tag}/{i}: " + "x" * 200)

if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=write, args=(t, start)) for t in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
"""


def test_log_lines_of_two_workers_never_splice(tmp_path):
    """Two spawned processes logging at once into one unbuffered pipe (as the pool's workers
    do under run_script): every line arrives whole, on its own line (``print`` wrote the text
    and the newline separately, and CI once saw one run's ``[train]`` line glued to
    another's)."""
    script = tmp_path / "splice.py"
    script.write_text(SPLICE_SCRIPT)
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(CONF.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=300, check=True)
    lines = proc.stdout.splitlines()
    assert len(lines) == 4000
    bad = [ln for ln in lines if not re.fullmatch(r"\[train\] [ab]/\d+: x{200}", ln)]
    assert not bad, bad[:3]


def test_field_styles_and_axis_cap():
    """One style per field, a hue per physics family; the cap clips only a diverging field."""
    fields = {"poisson": ["physics=poisson"], "pfgmpp_D8": ["physics=pfgmpp", "physics.D=8"],
              "ve": ["physics=ve"], "vp": ["physics=vp"], "flow": ["physics=linear"],
              "mine": ["physics=my_field"]}
    styles = field_styles(fields)
    assert styles == field_styles(fields)  # the same in every figure
    assert len({(str(s["color"]), s["marker"]) for s in styles.values()}) == len(fields)
    blue = [s["color"] for k, s in styles.items() if k in ("poisson", "pfgmpp_D8")]
    orange = [s["color"] for k, s in styles.items() if k in ("ve", "vp")]
    assert all(c[2] > c[0] for c in blue) and all(c[0] > c[2] for c in orange)
    xs = [5, 10, 20]
    series = {"a": (xs, [0.3, 0.1, 0.06], [0] * 3), "b": (xs, [0.2, 0.09, 0.07], [0] * 3),
              "c": (xs, [0.25, 0.08, 0.05], [0] * 3)}
    assert cap_of(series) is None  # nothing diverges: the axis shows everything
    series["d"] = (xs, [5.0, 4.9, 4.9], [0] * 3)
    cap = cap_of(series)
    assert cap == pytest.approx(1.2 * 0.3)  # above every other value, below the diverging one


def test_likelihood_of_image_shaped_data():
    """Regression (found by the case study's digits bits/dim): the ODE state of
    ``log_likelihood`` for ``(B, C, H, W)`` data was ``(B, 2d)`` instead of ``(B, d + 1)``.
    With the drift ``x / t`` (VE with denoiser 0) the ODE is solved in closed form:
    ``x_T = x · T / t0`` and ``log p(x) = log prior(x_T) + d · ln(T / t0)``."""
    import torch

    from unified_ode.physics import VEField
    from unified_ode.solvers.likelihood import log_likelihood

    field = VEField(t_min=0.01, t_max=10.0)
    x = torch.randn(5, 1, 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = log_likelihood(lambda y, t: y / t, field, x, divergence="exact", rtol=1e-8,
                         atol=1e-8)
    expected = field.prior_log_prob(x * 1000.0) + 6 * math.log(1000.0)
    assert res.x_T.shape == x.shape
    torch.testing.assert_close(res.x_T, x * 1000.0, rtol=1e-5, atol=0)
    torch.testing.assert_close(res.log_prob, expected, rtol=1e-6, atol=1e-5)
    flat = log_likelihood(lambda y, t: y / t, field, x.flatten(1), divergence="hutchinson",
                          rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(flat.log_prob, expected, rtol=1e-6, atol=1e-5)
