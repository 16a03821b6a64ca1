"""The case study: every field trained on equal terms, sampled at each NFE budget, one report.

    python bench/case_study.py                      # the study of conf/case_study.yaml
    python bench/case_study.py --smoke --out /tmp/case_smoke/results.md   # a few minutes
    python bench/case_study.py dataset=cifar10 network=ddpmpp trainer=ddp   # paper scale
    python bench/case_study.py --report-only        # rewrite the report from finished work

A thin driver over the project's own commands:

1. **train** — for each (data set, field, seed) ``train.py`` runs as a subprocess with the data
   set's overrides (its network included: the same for every field), the field's overrides,
   ``train_overrides``, the budget ``trainer.max_steps`` and ``seed``, then every
   ``key=value`` of this command line (passed through), in its own directory
   ``<root>/runs/<data set>/<field>/seed<k>``. A finished run (marker
   ``case_study_train.json``) is reused, an interrupted one (``last.ckpt``, no marker) is
   continued with ``resume=true``, and a run directory trained with other overrides is refused,
   never overwritten: the study resumes where it stopped.
2. **evaluate** — each run is loaded as ``sample.py`` loads it (``load_model``) with its EMA
   weights and scored by :class:`SampleScorer` exactly as
   ``sample.py task=evaluate`` does (``sw@n``/``mmd@n`` for points against held-out data,
   ``fid@n``/``kid@n``/``is@n`` for images with the Inception weights), for every solver at
   every NFE budget (the most steps whose NFE fits) and with the adaptive solver; bits/dim
   come from ``sample.py task=likelihood``'s function on the same EMA weights. A solver that
   needs a denoiser form (``dpmpp2m``, ``dpmpp3m``, ``exppc``) on a non-affine field
   (``radial_general``) is reported ``n/a``. Every score is cached as JSON under
   ``<run>/case_study/`` and reused.
3. **probes** (points data sets by default) — metric vs the Euler step count, and metric vs
   Gaussian noise added to the network's prediction: the module's model is wrapped so that
   each call returns ``p + eps · rms(p) · z`` with ``rms(p)`` the root mean square of the
   prediction over each sample's coordinates and ``z ~ N(0, I)`` (seeded), i.e. noise of
   relative size ``eps`` on whatever the network predicts (the denoiser for denoiser-objective
   fields, the velocity for velocity-objective ones). The same wrapped model serves the drift
   and the denoiser-form solvers.
4. **report** — ``--out`` (default ``docs/results.md`` for the configured study,
   ``<root>/results.md`` for ``--smoke`` or a data set from the command line): per data set
   the field × NFE table of the best solver's metric (mean ± std over seeds), bits/dim, one
   table per solver, the other metrics at each field's best setting, the probes, plots of
   metric vs NFE per field, the trajectories of each field (points) or a grid of samples per
   field (images), the budget, seeds, hardware and wall time; ``results.json`` beside it
   holds every number. The findings (which field is best at NFE ≤ 10 and which reaches the
   best quality) are computed from the table and printed.

``--jobs N`` (default: the config's ``jobs``) starts N copies of this command as workers that
take the runs one at a time through exclusive claim files and train and score them; then the
framework overhead (``bench/overhead.py``) is measured on the idle machine and the report
written. ``<root>/invocations.json`` keeps every invocation's wall time.

Lower is better for every ranking metric (sw, mmd, fid, kid); the IS is reported, not ranked.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
STUDY_CONFIG = CONF / "case_study.yaml"
sys.path.insert(0, str(ROOT))

TRAIN_MARKER = "case_study_train.json"
TRAIN_LOG = "case_study_train.out"
FEW_NFE = 10
NOT_RANKED = ("is",)


CODE_VERSION = "unknown"  # set by main()


def log(msg: str) -> None:
    print(msg, flush=True)


@functools.cache
def solver_kind(name: str):
    """The solver ``conf/solver/<name>.yaml`` builds, at its configured settings: the one place
    its NFE per step (:meth:`Solver.steps_within`) and form (``needs_denoiser``) come from."""
    return build_solver(name)


def steps_for(solver: str, nfe: int) -> int:
    try:
        return solver_kind(solver).steps_within(int(nfe))
    except ValueError as err:
        raise SystemExit(f"solver {solver!r} cannot be given an NFE budget: {err}") from err


def fmt(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "—"
    if not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}g}"


def mean_std(values: list[float]) -> tuple[float, float | None]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


def fmt_ms(values: list[float]) -> str:
    m, s = mean_std(values)
    return fmt(m) if s is None else f"{fmt(m)} ± {fmt(s, 2)}"


def write_json(path: Path, obj) -> None:
    """Atomic: a temporary file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def override_root(o: str) -> str:
    return o.lstrip("+~").split("=", 1)[0]


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------
@dataclass
class Run:
    dataset: str
    field: str
    seed: int
    overrides: list[str]
    run_dir: Path
    status: str = "planned"      # planned | trained | failed
    train_seconds: float | None = None


@dataclass
class Study:
    cfg: dict
    root: Path
    out: Path
    passthrough: list[str]
    runs: list[Run] = field(default_factory=list)
    workers: str = "one process"   # how the runs were shared out (for the report)


def dataset_overrides(overrides: list[str]) -> list[str]:
    """The command line's ``dataset=`` / ``experiment=`` overrides: they replace the study's
    data sets with one of their own."""
    return [o for o in overrides if "=" in o and override_root(o) in ("dataset", "experiment")]


def load_study(args) -> dict:
    base = OmegaConf.to_container(OmegaConf.load(args.config), resolve=True)
    smoke = base.pop("smoke", None) or {}
    # --fields/--datasets pick from everything the file defines (the smoke preset's first)
    catalog = {key: {**base[key], **(smoke.get(key) or {})} if args.smoke else base[key]
               for key in ("fields", "datasets")}
    if args.smoke:
        for key, value in smoke.items():  # replace whole sections (fields, datasets, ...)
            base[key] = value
    cfg = base
    datasets_given = dataset_overrides(args.overrides)
    if datasets_given:  # dataset=cifar10 ...: one data set, from the command line
        name = datasets_given[-1].split("=", 1)[1].replace("/", "_")
        cfg["datasets"] = {name: {"overrides": [], **cfg["custom_dataset"]}}
    if args.datasets:
        known = catalog["datasets"] if not datasets_given else cfg["datasets"]
        unknown = [d for d in args.datasets if d not in known]
        if unknown:
            raise SystemExit(f"unknown data set(s) {unknown}; known: {list(known)}")
        cfg["datasets"] = {d: known[d] for d in args.datasets}
    if args.fields:
        unknown = [f for f in args.fields if f not in catalog["fields"]]
        if unknown:
            raise SystemExit(f"unknown field(s) {unknown}; known: {list(catalog['fields'])}")
        cfg["fields"] = {f: catalog["fields"][f] for f in args.fields}
    for ds in cfg["datasets"].values():
        if args.steps is not None:
            ds["steps"] = args.steps
        if args.seeds is not None:
            ds["seeds"] = args.seeds
        if args.solvers is not None:
            ds["solvers"] = args.solvers
        if args.n is not None:
            ds["n"] = args.n
        if args.no_likelihood:
            ds["likelihood"] = False
        for s in ds["solvers"]:
            steps_for(s, 1)
    if args.nfe is not None:
        cfg["nfe"] = args.nfe
        for ds in cfg["datasets"].values():
            ds.pop("nfe", None)
    if args.no_adaptive:
        cfg["adaptive"] = None
    if args.likelihood_n is not None:
        cfg["likelihood"]["n"] = args.likelihood_n
        cfg["likelihood"]["batch_size"] = min(cfg["likelihood"]["batch_size"], args.likelihood_n)
    if args.probe_euler is not None:
        cfg["probes"]["euler_steps"] = args.probe_euler
    if args.probe_noise is not None:
        cfg["probes"]["noise"]["eps"] = args.probe_noise
    return cfg


def plan(study: Study) -> None:
    cfg = study.cfg
    for ds_name, ds in cfg["datasets"].items():
        for f_name, f_over in cfg["fields"].items():
            for seed in ds["seeds"]:
                over = [*ds["overrides"], *f_over, *cfg["train_overrides"]]
                if ds.get("steps") is not None:
                    over.append(f"trainer.max_steps={int(ds['steps'])}")
                over += [*study.passthrough, f"seed={int(seed)}"]
                run_dir = study.root / "runs" / ds_name / f_name / f"seed{int(seed)}"
                study.runs.append(Run(ds_name, f_name, int(seed), over, run_dir))


# ---------------------------------------------------------------------------------------------
# 1. Training (train.py subprocesses)
# ---------------------------------------------------------------------------------------------
def _saved_overrides(run_dir: Path) -> list[str] | None:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    return [str(o) for o in OmegaConf.load(path) if not str(o).startswith("resume=")]


def check_reusable(run: Run) -> None:
    """Refuses (SystemExit) a run directory trained, or partly trained, with other overrides;
    ``main`` checks every run before anything is trained or any worker starts."""
    marker = run.run_dir / TRAIN_MARKER
    if marker.is_file():
        info = json.loads(marker.read_text())
        if info["overrides"] != run.overrides:
            raise SystemExit(
                f"{run.run_dir} was trained with other overrides:\n  {info['overrides']}\n"
                f"this study asks for:\n  {run.overrides}\nIt is never overwritten: pass a "
                "new --root for a study with other settings.")
    elif ((run.run_dir / "checkpoints" / "last.ckpt").is_file()
          and _saved_overrides(run.run_dir) != run.overrides):
        raise SystemExit(f"{run.run_dir} holds an unfinished run with other overrides "
                         f"({_saved_overrides(run.run_dir)}); it is never overwritten: pass "
                         "a new --root.")


def train(run: Run, dry_run: bool = False) -> None:
    """Trains ``run`` (or continues it from ``last.ckpt``); a finished run is reused. The run
    directory has passed :func:`check_reusable`."""
    marker = run.run_dir / TRAIN_MARKER
    if marker.is_file():
        run.status, run.train_seconds = "trained", json.loads(marker.read_text())["seconds"]
        return
    resume = (run.run_dir / "checkpoints" / "last.ckpt").is_file()
    cmd = [sys.executable, str(ROOT / "train.py"), *run.overrides,
           f"hydra.run.dir={run.run_dir}"] + (["resume=true"] if resume else [])
    log(f"[train] {run.dataset}/{run.field}/seed{run.seed}" + (" (resuming)" if resume else "")
        + f": {shlex.join(cmd[1:])}")
    if dry_run:
        return
    run.run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with open(run.run_dir / TRAIN_LOG, "a") as out:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (run.run_dir / TRAIN_LOG).read_text()[-1500:]
        log(f"[train] FAILED ({proc.returncode}) after {seconds:.0f} s; the report marks it. "
            f"Log {run.run_dir / TRAIN_LOG}:\n{tail}")
        run.status = "failed"
        return
    write_json(marker, {"overrides": run.overrides, "seconds": seconds, "resumed": resume})
    run.status, run.train_seconds = "trained", seconds
    log(f"[train] done in {seconds:.1f} s")


# ---------------------------------------------------------------------------------------------
# 2./3. Evaluation and probes (in process, as sample.py task=evaluate / task=likelihood)
# ---------------------------------------------------------------------------------------------
class NoisyPrediction(torch.nn.Module):
    """``model`` whose every prediction ``p`` gets ``eps · rms(p) · z``, ``z ~ N(0, I)``."""

    def __init__(self, model: torch.nn.Module, eps: float, seed: int):
        super().__init__()
        self.inner = model
        self.eps = float(eps)
        self.generator = torch.Generator().manual_seed(int(seed))

    def forward(self, x, t):
        pred = self.inner(x, t)
        if self.eps == 0:
            return pred
        z = torch.randn(pred.shape, generator=self.generator, dtype=pred.dtype).to(pred.device)
        rms = pred.flatten(1).pow(2).mean(1).sqrt().view(-1, *([1] * (pred.dim() - 1)))
        return pred + self.eps * rms * z


@contextlib.contextmanager
def noisy_model(module, eps: float, seed: int):
    original = module.model
    module.model = NoisyPrediction(original, eps, seed)
    try:
        yield
    finally:
        module.model = original


def build_solver(name: str, steps: int | None = None, overrides=(), record_every: int = 0):
    from hydra.utils import instantiate

    path = CONF / "solver" / f"{name}.yaml"
    if not path.is_file():
        raise SystemExit(f"no solver config {path}")
    scfg = OmegaConf.load(path)
    dotlist = [o.split("solver.", 1)[1] for o in overrides]
    scfg = OmegaConf.merge(scfg, OmegaConf.from_dotlist(dotlist))
    if steps is not None:
        scfg.steps = int(steps)
    scfg.record_every = int(record_every)
    return instantiate(scfg)


@dataclass
class Cell:
    key: str
    solver: str
    steps: int | None = None          # None: adaptive
    overrides: tuple = ()
    eps: float | None = None          # noise probe


def cells_for(study: Study, run: Run) -> list[Cell]:
    cfg, ds = study.cfg, study.cfg["datasets"][run.dataset]
    cells = {}
    for s in ds["solvers"]:
        for b in budgets(study, run.dataset):
            k = steps_for(s, b)
            cells[f"{s}-s{k}"] = Cell(f"{s}-s{k}", s, k)
    ad = adaptive_of(study, run.dataset)
    if ad:
        tag = "_".join(o.split("=", 1)[0].split(".")[-1] + o.split("=", 1)[1]
                       for o in ad.get("overrides", []))
        key = f"adaptive-{ad['solver']}" + (f"-{tag}" if tag else "")
        cells[key] = Cell(key, ad["solver"], None, tuple(ad.get("overrides", [])))
    if probed(study, run.dataset):
        for k in cfg["probes"].get("euler_steps") or []:
            cells[f"euler-s{int(k)}"] = Cell(f"euler-s{int(k)}", "euler", int(k))
        noise = cfg["probes"].get("noise") or {}
        for eps in noise.get("eps") or []:
            k = steps_for(noise["solver"], noise["nfe"])
            key = f"noise-{noise['solver']}-s{k}-eps{float(eps):g}"
            cells[key] = Cell(key, noise["solver"], k, (), float(eps))
    return list(cells.values())


def adaptive_of(study: Study, dataset: str) -> dict | None:
    """The adaptive solver's settings for a data set (``adaptive: false`` in it: none)."""
    if study.cfg["datasets"][dataset].get("adaptive") is False:
        return None
    return study.cfg.get("adaptive") or None


def budgets(study: Study, dataset: str) -> list[int]:
    """The NFE budgets of a data set: its own ``nfe`` list, else the study's."""
    return [int(b) for b in study.cfg["datasets"][dataset].get("nfe") or study.cfg["nfe"]]


def probed(study: Study, dataset: str) -> bool:
    names = study.cfg["probes"].get("datasets")
    if names is not None:
        return dataset in names
    ov = study.cfg["datasets"][dataset]["overrides"] + study.passthrough
    return any(o == "dataset=toy2d" for o in ov) and not any(
        override_root(o) == "dataset" and o != "dataset=toy2d" for o in study.passthrough)


def cache_dir(study: Study, run: Run) -> Path:
    ds = study.cfg["datasets"][run.dataset]
    return run.run_dir / "case_study" / f"n{int(ds['n'])}-seed{int(study.cfg['eval']['seed'])}"


def likelihood_key(study: Study) -> str:
    lk = study.cfg["likelihood"]
    return "likelihood-" + "-".join(f"{k}{lk[k]}" for k in sorted(lk))


def figure_file(study: Study, run: Run) -> Path:
    f = study.cfg["figures"]
    k = steps_for(f["solver"], f["nfe"])
    return (run.run_dir / "case_study" /
            f"figure-{f['solver']}-s{k}-{f['n_points']}-{f['n_images']}.npz")


def first_seed(study: Study, run: Run) -> bool:
    return run.seed == int(study.cfg["datasets"][run.dataset]["seeds"][0])


class Loader:
    """Loads a run as sample.py does, once, on first use."""

    def __init__(self, run: Run, device: str):
        self.run, self.device, self.loaded, self.ema = run, device, None, False

    def compose(self, *overrides: str):
        from hydra import compose, initialize_config_dir

        from unified_ode.app.sample import register_resolvers

        register_resolvers()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="sample",
                           overrides=[f"run={self.run.run_dir}", *overrides])

    def get(self):
        if self.loaded is None:
            from unified_ode.app.sample import load_model

            cfg = self.compose("task=evaluate")
            with initialize_hydra():
                self.loaded = load_model(cfg, [])
            self.loaded.module.to(self.device)
            self.ema = self.loaded.ema  # load_model loads the EMA weights when present
            if not self.ema:
                log(f"  (no EMA weights in {self.loaded.checkpoint}: raw weights)")
        return self.loaded


@contextlib.contextmanager
def initialize_hydra():
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


def evaluate(study: Study, run: Run, device: str) -> None:
    from unified_ode.metrics.scoring import SampleScorer
    from unified_ode.solvers import is_affine

    cfg, ds = study.cfg, study.cfg["datasets"][run.dataset]
    loader = Loader(run, device)
    cdir = cache_dir(study, run)
    todo = [c for c in cells_for(study, run) if not (cdir / f"{c.key}.json").is_file()]
    scorer = None
    if todo:
        log(f"[eval] {run.dataset}/{run.field}/seed{run.seed}: {len(todo)} setting(s)")
    for cell in todo:
        loaded = loader.get()
        module = loaded.module
        if scorer is None:
            scorer = SampleScorer(n_samples=int(ds["n"]),
                                  batch_size=min(int(cfg["eval"]["batch_size"]), int(ds["n"])),
                                  seed=int(cfg["eval"]["seed"]), **(cfg["eval"]["scorer"] or {}))
            scorer.prepare(loaded.datamodule, device=module.device)
        record = {"solver": cell.solver, "steps": cell.steps, "eps": cell.eps,
                  "kind": scorer.kind, "primary": scorer.primary(scorer.kind),
                  "ema": loader.ema, "params": module.num_parameters(),
                  "code": CODE_VERSION}
        if solver_kind(cell.solver).needs_denoiser and not is_affine(module.field):
            record["na"] = f"{cell.solver} needs an affine field (denoiser form)"
            write_json(cdir / f"{cell.key}.json", record)
            continue
        solver = build_solver(cell.solver, cell.steps, cell.overrides)
        try:
            with noisy_model(module, cell.eps, cfg["eval"]["seed"]) if cell.eps \
                    else contextlib.nullcontext():
                metrics, _ = scorer.score(module, solver)
        except Exception as exc:  # a field that fails is reported, the study goes on
            log(f"  {cell.key}: FAILED {type(exc).__name__}: {str(exc).splitlines()[0]}")
            continue
        record.update(metrics=metrics, nfe=metrics["nfe"], seconds=metrics["eval/seconds"],
                      describe=solver.describe())
        write_json(cdir / f"{cell.key}.json", record)
        log(f"  {cell.key}: {record['primary']}={metrics[record['primary']]:.5g} "
            f"NFE={metrics['nfe']:g} ({metrics['eval/seconds']:.1f} s)")

    if ds.get("likelihood"):
        lk_dir = cdir / likelihood_key(study)
        if not (lk_dir / "likelihood.json").is_file():
            from unified_ode.app.likelihood import likelihood_task

            loaded = loader.get()
            lcfg = loader.compose("task=likelihood", f"seed={int(cfg['eval']['seed'])}",
                                  *[f"likelihood.{k}={v}" for k, v in cfg["likelihood"].items()])
            log(f"[likelihood] {run.dataset}/{run.field}/seed{run.seed}")
            try:
                likelihood_task(lcfg, loaded, lk_dir)
            except Exception as exc:
                log(f"  likelihood FAILED {type(exc).__name__}: {str(exc).splitlines()[0]}")

    fig = figure_file(study, run)
    if first_seed(study, run) and not fig.is_file():
        loaded = loader.get()
        module, f = loaded.module, cfg["figures"]
        solver = build_solver(f["solver"], steps_for(f["solver"], f["nfe"]), record_every=1)
        images = getattr(loaded.datamodule, "kind", None) == "images"
        g = torch.Generator().manual_seed(int(cfg["eval"]["seed"]) + 7)
        n = int(f["n_images"] if images else f["n_points"])
        x_T = module.field.sample_prior(n, module.data_shape, generator=g)
        result = module.sample(x_T=x_T, solver=solver)
        arrays = {"samples": result.x.cpu().numpy(), "nfe": result.nfe}
        if images:
            from unified_ode.viz.images import to_uint8_nhwc

            arrays["samples"] = to_uint8_nhwc(result.x.cpu())
        else:
            arrays["trajectory"] = result.trajectory[:, : int(f["n_lines"])].cpu().numpy()
            arrays["trajectory_times"] = result.trajectory_times.cpu().numpy()
            arrays["data"] = loaded.datamodule.heldout(n).cpu().numpy()
        fig.parent.mkdir(parents=True, exist_ok=True)
        tmp = fig.with_name(fig.stem + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(fig)


# ---------------------------------------------------------------------------------------------
# Parallel workers (--jobs N): N copies of this command share the runs through claim files
# ---------------------------------------------------------------------------------------------
def work(study: Study, token: str, device: str) -> int:
    """One worker: claims the next unclaimed run (an exclusive file under
    ``<root>/.claims/<token>``), trains and scores it, and so on until none is left."""
    claims = study.root / ".claims" / token
    if not claims.is_dir():
        raise SystemExit(f"--worker {token}: no claim folder {claims} (workers are started by "
                         "--jobs N, not by hand)")
    failed = 0
    for run in study.runs:
        name = f"{run.dataset}--{run.field}--seed{run.seed}"
        try:
            os.close(os.open(claims / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        train(run)
        if run.status == "trained":
            evaluate(study, run, device)
        else:
            failed += 1
    return 1 if failed else 0


def run_workers(study: Study, jobs: int, argv: list[str]) -> int:
    """Starts ``jobs`` workers (this command with ``--worker``), each with
    ``OMP_NUM_THREADS = cores // jobs`` unless the environment sets it, prefixes their output
    with ``[wK]`` and waits for all; returns the number of workers that failed."""
    token = f"{os.getpid()}-{time.time_ns()}"
    claims = study.root / ".claims" / token
    claims.mkdir(parents=True)
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // jobs))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": threads}
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--jobs", "1",
           "--worker", token]
    study.workers = f"{jobs} worker processes sharing the runs, OMP_NUM_THREADS={threads} each"
    log(f"case study: {study.workers}")
    procs, pumps = [], []
    try:
        for k in range(jobs):
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, bufsize=1)
            pump = threading.Thread(target=lambda k=k, proc=proc: [
                log(f"[w{k}] {line.rstrip()}") for line in proc.stdout], daemon=True)
            pump.start()
            procs.append(proc)
            pumps.append(pump)
        codes = [proc.wait() for proc in procs]
        for pump in pumps:
            pump.join()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        shutil.rmtree(claims, ignore_errors=True)
    return sum(code != 0 for code in codes)


# ---------------------------------------------------------------------------------------------
# Framework overhead (bench/overhead.py), measured once the runs are done
# ---------------------------------------------------------------------------------------------
@functools.cache
def overhead_bench():
    """bench/overhead.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("case_study_overhead",
                                                  ROOT / "bench" / "overhead.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def overhead_file(study: Study) -> Path | None:
    ov = study.cfg.get("overhead")
    if not ov:
        return None
    key = "-".join(f"{k}{'+'.join(map(str, v)) if isinstance(v, list) else v}"
                   for k, v in sorted(ov.items()))
    return study.root / f"overhead-{key}.json"


def measure_overhead(study: Study) -> None:
    """Times our LightningModule against a bare loop (bench/overhead.py's ``measure``) in this
    process, after every run has finished, so nothing else competes for the cores; cached."""
    path = overhead_file(study)
    if path is None or path.is_file():
        return
    ov, bench = study.cfg["overhead"], overhead_bench()
    log(f"[overhead] {', '.join(ov['setups'])}: {ov['rounds']} round(s) of {ov['steps']} "
        f"steps, {torch.get_num_threads()} torch thread(s)")
    rows = [bench.measure(name, bench.SETUPS[name], int(ov["steps"]), int(ov["warmup"]),
                          int(ov["rounds"]), int(ov["samples"])) for name in ov["setups"]]
    write_json(path, {"settings": ov, "threads": torch.get_num_threads(), "rows": rows})
    for line in bench.table(rows):
        log(line)


def overhead_section(study: Study) -> list[str]:
    path = overhead_file(study)
    if path is None:
        return []
    lines = ["## Framework overhead", ""]
    if not path.is_file():
        return lines + ["Not measured (run without --report-only).", ""]
    data, bench = json.loads(path.read_text()), overhead_bench()
    ov = data["settings"]
    lines += [f"`bench/overhead.py`'s measurement, made by this command after every run had "
              f"finished ({data['threads']} torch thread(s)): a training step of our "
              "LightningModule (a real `Trainer`, no logger, checkpoints or callbacks) against "
              "a hand-written loop with the same network, objective, optimiser, clipping and "
              "pre-loaded batches, and a `GenerativeODE.sample` call against a bare Heun loop "
              f"on the same prior states; medians of {ov['rounds']} rounds of "
              f"{int(ov['steps']) - int(ov['warmup'])} timed steps (the side that goes first "
              "alternates). Ratio = ours / bare; targets ≤ "
              f"{bench.TRAIN_TARGET} (training step) and ≤ {bench.SAMPLE_TARGET} (sampling).", ""]
    lines += bench.table(data["rows"]) + [""]
    for r in data["rows"]:
        for what, target, ratio, rounds in (
                ("training step", bench.TRAIN_TARGET, r["train_ours_ms"] / r["train_bare_ms"],
                 r["train_ratios"]),
                ("sampling", bench.SAMPLE_TARGET, r["sample_ours_s"] / r["sample_bare_s"],
                 r["sample_ratios"])):
            if ratio <= target:
                verdict = "meets the target"
            elif min(rounds) <= target:
                verdict = (f"misses the target in the median, but the rounds' paired ratios "
                           f"({bench.spread(rounds)}) reach below it: within this machine's "
                           "timing noise")
            else:
                verdict = (f"misses the target in every round ({bench.spread(rounds)}): a "
                           "measured overhead")
            lines.append(f"- {r['setup']}, {what}: {ratio:.3f} {verdict}.")
    return lines + [""]


def record_invocation(study: Study, command: str, wall: float, record: bool) -> list[dict]:
    """Appends this invocation to ``<root>/invocations.json`` (when ``record``: not for
    --report-only, which computes nothing); returns all of them."""
    path = study.root / "invocations.json"
    past = json.loads(path.read_text()) if path.is_file() else []
    if record:
        past.append({"command": command, "wall_seconds": round(wall, 1),
                     "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z")})
        write_json(path, past)
    return past


# ---------------------------------------------------------------------------------------------
# 4. Report
# ---------------------------------------------------------------------------------------------
def collect(study: Study) -> dict:
    """``results[dataset][field][seed] = {cells, bpd, train_seconds, status}``."""
    results: dict = {}
    for run in study.runs:
        entry = {"status": run.status, "train_seconds": run.train_seconds, "cells": {},
                 "bpd": None, "bpd_info": None, "run_dir": str(run.run_dir)}
        cdir = cache_dir(study, run)
        if run.status == "trained":
            for cell in cells_for(study, run):
                path = cdir / f"{cell.key}.json"
                if path.is_file():
                    entry["cells"][cell.key] = json.loads(path.read_text())
            lk = cdir / likelihood_key(study) / "likelihood.json"
            if lk.is_file():
                info = json.loads(lk.read_text())
                entry["bpd"] = info["bits_per_dim"]
                entry["bpd_info"] = {k: info[k] for k in ("n", "divergence", "convention",
                                                          "wall_seconds")}
            resolved = run.run_dir / "config_resolved.yaml"
            if resolved.is_file():
                rc = OmegaConf.load(resolved)
                entry["budget"] = {"steps": int(rc.trainer.max_steps),
                                   "batch_size": int(rc.dataset.batch_size),
                                   "network": str(rc.network._target_).rsplit(".", 1)[-1]}
        results.setdefault(run.dataset, {}).setdefault(run.field, {})[run.seed] = entry
    return results


def values(seeds: dict, key: str, metric: str | None = None) -> tuple[list, list] | None:
    """Metric values and NFEs of cell ``key`` over the seeds that have it (None: none do,
    ``("n/a", reason)`` when it does not apply)."""
    vals, nfes = [], []
    for entry in seeds.values():
        rec = entry["cells"].get(key)
        if rec is None:
            continue
        if "na" in rec:
            return "n/a", rec["na"]
        vals.append(rec["metrics"][metric or rec["primary"]])
        nfes.append(rec["nfe"])
    return (vals, nfes) if vals else None


def primary_of(ds_results: dict) -> tuple[str | None, str | None]:
    for seeds in ds_results.values():
        for entry in seeds.values():
            for rec in entry["cells"].values():
                return rec["primary"], rec["kind"]
    return None, None


@dataclass
class Best:
    field: str
    key: str
    mean: float
    std: float | None
    nfe: float
    solver: str


def best_cell(study: Study, ds_name: str, seeds: dict, budget: int | None) -> Best | None:
    """The solver with the lowest mean metric at NFE budget ``budget`` (None: adaptive)."""
    ds = study.cfg["datasets"][ds_name]
    if budget is None:
        keys = [k for k in _any_cells(seeds) if k.startswith("adaptive-")]
    else:
        keys = [f"{s}-s{steps_for(s, budget)}" for s in ds["solvers"]]
    best = None
    for key in keys:
        got = values(seeds, key)
        if not got or got[0] == "n/a":
            continue
        vals, nfes = got
        m, s = mean_std(vals)
        if not math.isfinite(m):
            continue
        if best is None or m < best.mean:
            solver = key.split("-")[1] if budget is None else key.split("-")[0]
            best = Best("", key, m, s, float(np.mean(nfes)), solver)
    return best


def _any_cells(seeds: dict) -> list[str]:
    return sorted({k for e in seeds.values() for k in e["cells"]})


def findings(study: Study, results: dict) -> dict:
    """Per data set: the field best at NFE ≤ 10 and the field with the best quality overall."""
    out = {}
    for ds_name, ds_results in results.items():
        primary, _ = primary_of(ds_results)
        if primary is None:
            continue
        few, overall = {}, {}
        for f_name, seeds in ds_results.items():
            cands = [best_cell(study, ds_name, seeds, b) for b in budgets(study, ds_name)
                     if b <= FEW_NFE]
            cands = [c for c in cands if c]
            if cands:
                few[f_name] = min(cands, key=lambda c: c.mean)
            allc = cands + [c for c in (best_cell(study, ds_name, seeds, b)
                                        for b in [*budgets(study, ds_name), None]) if c]
            if allc:
                overall[f_name] = min(allc, key=lambda c: c.mean)
        item = {"metric": primary}
        for name, table in (("few_nfe", few), ("best_quality", overall)):
            if not table:
                continue
            ranked = sorted(table.items(), key=lambda kv: kv[1].mean)
            item[name] = [{"field": f, "mean": b.mean, "std": b.std, "nfe": b.nfe,
                           "solver": b.solver} for f, b in ranked]
        out[ds_name] = item
    return out


def finding_lines(found: dict) -> list[str]:
    lines, wins_few, wins_best = [], {}, {}
    for ds_name, item in found.items():
        for name, label in (("few_nfe", f"best at NFE ≤ {FEW_NFE}"),
                            ("best_quality", "best quality (any solver, any NFE)")):
            ranked = item.get(name)
            if not ranked:
                continue
            top = ranked[0]
            text = (f"{ds_name}: {label}: **{top['field']}**, {item['metric']} "
                    f"{fmt(top['mean'])}" + (f" ± {fmt(top['std'], 2)}" if top["std"] else "")
                    + f" ({top['solver']}, NFE {top['nfe']:g})")
            if len(ranked) > 1:
                r = ranked[1]
                text += (f"; runner-up {r['field']} {fmt(r['mean'])}"
                         + (f" ± {fmt(r['std'], 2)}" if r["std"] else ""))
                if top["std"] and r["std"] and r["mean"] - top["mean"] < top["std"] + r["std"]:
                    text += " (within the seed spread)"
            lines.append(text)
            wins = wins_few if name == "few_nfe" else wins_best
            wins[top["field"]] = wins.get(top["field"], 0) + 1
    n = len(found)
    for wins, label in ((wins_few, f"fastest at few NFE (≤ {FEW_NFE})"),
                        (wins_best, "best quality")):
        if wins:
            order = sorted(wins.items(), key=lambda kv: -kv[1])
            lines.append(f"Overall, {label}: **{order[0][0]}** (best on {order[0][1]} of {n} "
                         "data set(s)" + (", then " + ", ".join(f"{f} ({k})" for f, k in
                                                              order[1:]) if order[1:] else "")
                         + ")")
    return lines


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def cell_text(got, with_nfe: bool = True) -> str:
    if got is None:
        return "—"
    if got[0] == "n/a":
        return "n/a"
    vals, nfes = got
    text = fmt_ms(vals)
    return f"{text} ({np.mean(nfes):g})" if with_nfe else text


def dataset_section(study: Study, ds_name: str, ds_results: dict, stem: str) -> list[str]:
    cfg, ds = study.cfg, study.cfg["datasets"][ds_name]
    nfes = budgets(study, ds_name)
    primary, kind = primary_of(ds_results)
    lines = [f"## {ds_name}", ""]
    trained = [e.get("budget") for seeds in ds_results.values() for e in seeds.values()
               if e.get("budget")]
    b = trained[0] if trained else None
    lines.append(f"Training overrides: `{' '.join(ds['overrides'] + study.passthrough)}`; "
                 + (f"budget {b['steps']} steps × batch {b['batch_size']}, network "
                    f"{b['network']}" if b else "budget: see the runs")
                 + f"; seeds {list(ds['seeds'])}; metric `{primary}` on {ds['n']} samples "
                 f"({'held-out data' if kind == 'points' else 'Inception features'}), "
                 "lower is better.")
    failed = [f"{f}/seed{s}" for f, seeds in ds_results.items() for s, e in seeds.items()
              if e["status"] != "trained"]
    if failed:
        lines.append(f"Training failed or not run: {', '.join(failed)} (see their "
                     f"{TRAIN_LOG}).")
    lines.append("")
    if primary is None:
        return lines + ["No scores yet.", ""]
    has_bpd = bool(ds.get("likelihood"))
    header = ["field", *[f"NFE ≤ {n}" for n in nfes]]
    adaptive = adaptive_of(study, ds_name)
    header += ["adaptive"] if adaptive else []
    header += ["bits/dim"] if has_bpd else []
    header += ["train s"]
    rows = []
    for f_name, seeds in ds_results.items():
        row = [f_name]
        for budget in [*nfes, *([None] if adaptive else [])]:
            bc = best_cell(study, ds_name, seeds, budget)
            if bc is None:
                row.append("—")
                continue
            spread = f" ± {fmt(bc.std, 2)}" if bc.std is not None else ""
            where = f"{bc.solver} {bc.nfe:g}" if budget else f"NFE {bc.nfe:g}"
            row.append(f"{fmt(bc.mean)}{spread} ({where})")
        if has_bpd:
            bpds = [e["bpd"] for e in seeds.values() if e["bpd"] is not None]
            row.append(fmt_ms(bpds) if bpds else "—")
        secs = [e["train_seconds"] for e in seeds.values() if e["train_seconds"]]
        row.append(f"{np.mean(secs):.0f}" if secs else "—")
        rows.append(row)
    lines += [f"### {primary} of the best solver at each NFE budget", "",
              f"Mean ± std over {len(ds['seeds'])} seed(s); in brackets the solver and its "
              "measured NFE (adaptive: "
              + (f"{adaptive['solver']} {' '.join(adaptive['overrides'])}"
                 if adaptive else "off") + ")."
              + (" Bits/dim: `sample.py task=likelihood` on "
                 f"{cfg['likelihood']['n']} held-out points "
                 f"({cfg['likelihood'].get('divergence', 'auto')} divergence)." if has_bpd
                 else ""), ""]
    lines += table(header, rows) + [""]
    lines += [f"![{primary} vs NFE]({stem}_{ds_name}_nfe.png)", ""]

    lines += ["### Every solver", "", f"{primary}, mean ± std over seeds (measured NFE); "
              "n/a: the solver needs an affine field.", ""]
    for solver in ds["solvers"]:
        rows = [[f_name, *[cell_text(values(seeds, f"{solver}-s{steps_for(solver, n)}"))
                           for n in nfes]] for f_name, seeds in ds_results.items()]
        lines += [f"**{solver}**", ""] + table(["field", *[f"NFE ≤ {n}" for n in nfes]],
                                               rows) + [""]

    others = sorted({m for seeds in ds_results.values() for e in seeds.values()
                     for r in e["cells"].values() for m in r.get("metrics", {})
                     if "@" in m and not m.startswith("prior/")},
                    key=lambda m: (m != primary, m))
    rows = []
    for f_name, seeds in ds_results.items():
        cands = [c for c in (best_cell(study, ds_name, seeds, n)
                             for n in [*nfes, None]) if c]
        if not cands:
            continue
        top = min(cands, key=lambda c: c.mean)
        rows.append([f_name, f"{top.solver} NFE {top.nfe:g}",
                     *[cell_text(values(seeds, top.key, m), with_nfe=False) for m in others]])
    lines += ["### All metrics at each field's best setting", ""]
    lines += table(["field", "setting", *others], rows) + [""]

    if probed(study, ds_name):
        pr = cfg["probes"]
        if pr.get("euler_steps"):
            rows = [[f_name, *[cell_text(values(seeds, f"euler-s{int(k)}"), with_nfe=False)
                               for k in pr["euler_steps"]]]
                    for f_name, seeds in ds_results.items()]
            lines += ["### Probe: Euler step count", "",
                      f"{primary} with Euler at each step count (NFE = steps).", ""]
            lines += table(["field", *[f"{int(k)} steps" for k in pr["euler_steps"]]], rows)
            lines += [""]
        noise = pr.get("noise") or {}
        if noise.get("eps"):
            k = steps_for(noise["solver"], noise["nfe"])
            rows = [[f_name, *[cell_text(values(
                seeds, f"noise-{noise['solver']}-s{k}-eps{float(e):g}"), with_nfe=False)
                for e in noise["eps"]]] for f_name, seeds in ds_results.items()]
            lines += ["### Probe: noise on the network's prediction", "",
                      f"{primary} with {noise['solver']} ({k} steps) when every prediction p "
                      "is replaced by p + ε·rms(p)·z, z ~ N(0, I), rms over each sample's "
                      "coordinates (the denoiser for denoiser-objective fields, the velocity "
                      "for velocity-objective ones).", ""]
            lines += table(["field", *[f"ε = {float(e):g}" for e in noise["eps"]]], rows)
            lines += [""]
        lines += [f"![probes]({stem}_{ds_name}_probes.png)", ""]
    f = cfg["figures"]
    what = "samples" if kind == "images" else "trajectories"
    lines += [f"![{what} per field]({stem}_{ds_name}_{what}.png)", "",
              f"*{what.capitalize()} of each field (seed {ds['seeds'][0]}, {f['solver']} at "
              f"NFE ≤ {f['nfe']}" + (", over held-out data (grey)" if kind == "points" else "")
              + ").*", ""]
    return lines


def _plain_ticks(ax, y: bool = True) -> None:
    """Log axes labelled 5, 10, 20 rather than 5×10⁰."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    for axis in (ax.xaxis, ax.yaxis) if y else (ax.xaxis,):
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(NullFormatter())


def plots(study: Study, results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = study.cfg
    stem = out.with_suffix("")
    for ds_name, ds_results in results.items():
        primary, kind = primary_of(ds_results)
        if primary is None:
            continue
        ds = cfg["datasets"][ds_name]
        panels = ["best solver", *ds["solvers"]]
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8),
                                 squeeze=False, sharey=True)
        for ax, panel in zip(axes[0], panels):
            for f_name, seeds in ds_results.items():
                xs, ys, es = [], [], []
                for n in budgets(study, ds_name):
                    if panel == "best solver":
                        bc = best_cell(study, ds_name, seeds, n)
                        got = (bc.mean, bc.std, bc.nfe) if bc else None
                    else:
                        v = values(seeds, f"{panel}-s{steps_for(panel, n)}")
                        got = None if not v or v[0] == "n/a" else (
                            *mean_std(v[0]), float(np.mean(v[1])))
                    if got and math.isfinite(got[0]):
                        ys.append(got[0])
                        es.append(got[1] or 0.0)
                        xs.append(got[2])
                if xs:
                    line = ax.errorbar(xs, ys, yerr=es, marker="o", ms=3, lw=1, capsize=2,
                                       label=f_name)
                    if panel == "best solver":
                        bc = best_cell(study, ds_name, seeds, None)
                        if bc:
                            ax.plot([bc.nfe], [bc.mean], marker="*", ms=9, ls="none",
                                    color=line[0].get_color())
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("NFE")
            _plain_ticks(ax, y=False)
            ax.set_title(panel + (" (★ adaptive)" if panel == "best solver" else ""))
        axes[0, 0].set_ylabel(primary)
        axes[0, 0].legend(fontsize=7)
        fig.suptitle(f"{ds_name}: {primary} vs NFE (mean ± std over seeds)")
        fig.tight_layout()
        fig.savefig(f"{stem}_{ds_name}_nfe.png", dpi=100)
        plt.close(fig)

        if probed(study, ds_name):
            pr = cfg["probes"]
            noise = pr.get("noise") or {}
            fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), squeeze=False)
            for f_name, seeds in ds_results.items():
                pts = [(int(k), values(seeds, f"euler-s{int(k)}"))
                       for k in pr.get("euler_steps") or []]
                pts = [(k, mean_std(v[0])) for k, v in pts if v and v[0] != "n/a"]
                if pts:
                    axes[0, 0].errorbar([p[0] for p in pts], [p[1][0] for p in pts],
                                        yerr=[p[1][1] or 0 for p in pts], marker="o", ms=3,
                                        capsize=2, label=f_name)
                if noise.get("eps"):
                    k = steps_for(noise["solver"], noise["nfe"])
                    pts = [(float(e), values(seeds, f"noise-{noise['solver']}-s{k}-eps"
                                                    f"{float(e):g}")) for e in noise["eps"]]
                    pts = [(e, mean_std(v[0])) for e, v in pts if v and v[0] != "n/a"]
                    if pts:
                        axes[0, 1].errorbar([p[0] for p in pts], [p[1][0] for p in pts],
                                            yerr=[p[1][1] or 0 for p in pts], marker="o",
                                            ms=3, capsize=2, label=f_name)
            axes[0, 0].set(xscale="log", yscale="log", xlabel="Euler steps", ylabel=primary,
                           title="step-size robustness")
            axes[0, 1].set(yscale="log", xlabel="relative noise ε on the prediction",
                           ylabel=primary, title="noise robustness")
            _plain_ticks(axes[0, 0], y=False)
            axes[0, 0].legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(f"{stem}_{ds_name}_probes.png", dpi=100)
            plt.close(fig)

        figs = {}
        for run in study.runs:
            if run.dataset == ds_name and first_seed(study, run):
                path = figure_file(study, run)
                if path.is_file():
                    figs[run.field] = dict(np.load(path))
        if not figs:
            continue
        cols = min(4, len(figs))
        rows_n = math.ceil(len(figs) / cols)
        fig, axes = plt.subplots(rows_n, cols, figsize=(3.6 * cols, 3.6 * rows_n),
                                 squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, (f_name, arr) in zip(axes.flat, figs.items()):
            ax.axis("on")
            if kind == "images":
                from unified_ode.viz.images import grid_array

                grid = grid_array(arr["samples"], scale=1)
                ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray")
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                data, samples, traj = arr["data"], arr["samples"], arr["trajectory"]
                lo, hi = data.min(0), data.max(0)
                pad = 0.15 * (hi - lo)
                ax.scatter(data[:, 0], data[:, 1], s=1, c="0.7", rasterized=True)
                ax.scatter(samples[:, 0], samples[:, 1], s=1.5, c="tab:blue", alpha=0.6,
                           rasterized=True)
                for j in range(traj.shape[1]):
                    ax.plot(traj[:, j, 0], traj[:, j, 1], lw=0.5, c="tab:orange", alpha=0.7)
                ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
                ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
                ax.set_aspect("equal")
            ax.set_title(f"{f_name} (NFE {int(arr['nfe'])})", fontsize=9)
        fig.tight_layout()
        what = "samples" if kind == "images" else "trajectories"
        fig.savefig(f"{stem}_{ds_name}_{what}.png", dpi=100)
        plt.close(fig)


def code_version() -> str:
    """``git describe``-like id of the library code the scores came from (``+dirty`` when
    unified_ode/ has uncommitted changes); cached scores keep the id they were made with."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--", "unified_ode") else "")


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    text = (f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} with "
            f"{torch.get_num_threads()} thread(s) (OMP_NUM_THREADS="
            f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), Python "
            f"{platform.python_version()}, {platform.system()}")
    if torch.cuda.is_available():
        text += f"; GPU: {torch.cuda.get_device_name(0)} × {torch.cuda.device_count()}"
    return text


def report(study: Study, results: dict, wall: float, command: str,
           invocations: list[dict], computed: bool = True) -> list[str]:
    out = study.out
    out.parent.mkdir(parents=True, exist_ok=True)
    plots(study, results, out)
    found = findings(study, results)
    lines_found = finding_lines(found)
    train_s = sum(r.train_seconds or 0 for r in study.runs)
    eval_s = sum(rec.get("seconds", 0) for ds in results.values() for seeds in ds.values()
                 for e in seeds.values() for rec in e["cells"].values())
    bpd_s = sum((e["bpd_info"] or {}).get("wall_seconds", 0) for ds in results.values()
                for seeds in ds.values() for e in seeds.values())
    stem = out.with_suffix("").name
    cfg = study.cfg
    md = ["# Case study: every field on equal terms", "",
          f"Generated by `{command}` (bench/case_study.py, settings in conf/case_study.yaml). "
          "Every field is trained with the same network and budget per data set, then each "
          "trained model (EMA weights) is sampled from fixed prior noise with every solver at "
          f"each NFE budget ({', '.join(f'{d}: {budgets(study, d)}' for d in cfg['datasets'])})"
          " and scored as `sample.py task=evaluate` does.",
          "",
          "- Fields: " + ", ".join(f"`{k}` ({' '.join(v)})" for k, v in cfg["fields"].items()),
          f"- Hardware: {hardware()}; {study.workers}",
          (f"- Wall time of this invocation: {wall:.0f} s ({wall / 3600:.2f} h); of the "
           if computed else
           f"- Report regenerated from saved scores (--report-only) in {wall:.0f} s; wall time "
           "of the ")
          + f"{len(invocations)} finished invocation(s) that trained or measured on this root: "
          f"{sum(i['wall_seconds'] for i in invocations):.0f} s (`invocations.json`). "
          f"Recorded compute: training {train_s:.0f} s, scoring {eval_s:.0f} s, bits/dim "
          f"{bpd_s:.0f} s (runs reused from earlier invocations count in the recorded "
          "compute; with several workers it exceeds the wall time).",
          f"- Runs: {study.root / 'runs'}; scores made with library code "
          + ", ".join(sorted({rec.get("code", "unknown") for ds in results.values()
                              for seeds in ds.values() for e in seeds.values()
                              for rec in e["cells"].values()})) + " (cached scores are "
          "reused: use a new --root after changing solvers or metrics)", "",
          "## Findings (computed from the tables below)", ""]
    md += [f"- {line}" for line in lines_found] or ["- no scores"]
    md += [""]
    for ds_name, ds_results in results.items():
        md += dataset_section(study, ds_name, ds_results, stem)
    md += overhead_section(study)
    out.write_text("\n".join(md) + "\n")
    raw = {"command": command, "wall_seconds": wall, "hardware": hardware(),
           "config": cfg, "findings": found,
           "results": {d: {f: {str(s): e for s, e in seeds.items()} for f, seeds in r.items()}
                       for d, r in results.items()}}
    write_json(out.with_name(out.stem + ".json"), raw)
    return lines_found


# ---------------------------------------------------------------------------------------------
def parse_args(argv=None):
    def ints(s):
        return [int(x) for x in s.split(",") if x]

    def floats(s):
        return [] if s == "none" else [float(x) for x in s.split(",") if x]

    def names(s):
        return [x for x in s.split(",") if x]

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="train.py overrides for every run, e.g. "
                   "dataset=cifar10 network=ddpmpp trainer=ddp (a dataset=/experiment= "
                   "replaces the study's data sets)")
    p.add_argument("--config", default=str(STUDY_CONFIG))
    p.add_argument("--smoke", action="store_true", help="the small preset (smoke: section)")
    p.add_argument("--out", default=None,
                   help="the report (figures and <stem>.json beside it); default: the "
                   "project's docs/results.md for the configured study, <root>/results.md "
                   "for --smoke or a data set given on the command line")
    p.add_argument("--root", default=None, help="where the runs go (default: "
                   "outputs/case_study; outputs/case_study_smoke with --smoke, "
                   "outputs/case_study_<data set> for a data set given on the command line)")
    p.add_argument("--fields", type=names)
    p.add_argument("--datasets", type=names)
    p.add_argument("--seeds", type=ints)
    p.add_argument("--steps", type=int, help="training budget (trainer.max_steps) of every run")
    p.add_argument("--nfe", type=ints)
    p.add_argument("--solvers", type=names)
    p.add_argument("--n", type=int, help="samples scored per setting")
    p.add_argument("--no-adaptive", action="store_true")
    p.add_argument("--no-likelihood", action="store_true")
    p.add_argument("--likelihood-n", type=int)
    p.add_argument("--probe-euler", type=lambda s: [] if s == "none" else ints(s),
                   help="Euler step counts of the step-size probe (none: off)")
    p.add_argument("--probe-noise", type=floats, help="relative noise levels (none: off)")
    p.add_argument("--device", default="auto", help="evaluation device: auto | cpu | cuda")
    p.add_argument("--report-only", action="store_true", help="no training or scoring")
    p.add_argument("--dry-run", action="store_true", help="print the training commands only")
    p.add_argument("--jobs", type=int, help="worker processes sharing the runs (default: the "
                   "config's `jobs`); each gets OMP_NUM_THREADS = cores // jobs")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # set by --jobs: a claim-folder token
    return p.parse_args(argv)


def main(argv=None) -> int:
    global CODE_VERSION
    args = parse_args(argv)
    wall_start = time.perf_counter()
    CODE_VERSION = code_version()
    bad = [o for o in args.overrides if "=" not in o and not o.startswith("~")]
    if bad:
        raise SystemExit(f"overrides must be key=value (or ~key), got {bad}")
    cfg = load_study(args)
    custom = args.smoke or bool(dataset_overrides(args.overrides))
    name = ("case_study_smoke" if args.smoke else
            f"case_study_{next(iter(cfg['datasets']))}" if custom else "case_study")
    root = Path(args.root or ROOT / "outputs" / name).resolve()
    out = args.out or (root / "results.md" if custom else ROOT / "docs" / "results.md")
    study = Study(cfg, root, Path(out).resolve(), list(args.overrides))
    plan(study)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else args.device
    log(f"case study: {len(study.runs)} training runs ({len(cfg['fields'])} fields × "
        f"{len(cfg['datasets'])} data set(s) × seeds) under {root}; report {study.out}")
    jobs = int(args.jobs if args.jobs is not None else cfg.get("jobs") or 1)
    if args.worker:  # started by run_workers, after the checks below
        return work(study, args.worker, device)
    if not args.report_only:
        for run in study.runs:  # refuse before anything is trained or any worker starts
            check_reusable(run)
    if args.dry_run:
        for run in study.runs:
            train(run, dry_run=True)
        return 0
    failed_workers = 0
    if jobs > 1 and not args.report_only:
        # the workers train and score; the report below reads their files
        failed_workers = run_workers(study, jobs, list(sys.argv[1:] if argv is None else argv))
    elif not args.report_only:
        for run in study.runs:
            train(run)
        for run in study.runs:
            if run.status == "trained":
                evaluate(study, run, device)
    for run in study.runs:
        marker = run.run_dir / TRAIN_MARKER
        if marker.is_file():
            run.status, run.train_seconds = "trained", json.loads(marker.read_text())["seconds"]
    if not args.report_only and not failed_workers:
        measure_overhead(study)  # every run is done: nothing else competes for the cores
    results = collect(study)
    wall = time.perf_counter() - wall_start
    command = ("python bench/case_study.py " + shlex.join(sys.argv[1:] if argv is None
                                                          else argv)).strip()
    invocations = record_invocation(study, command, wall, record=not args.report_only)
    lines = report(study, results, wall, command, invocations,
                   computed=not args.report_only)
    log("")
    for line in lines:
        log(line.replace("**", ""))
    log(f"wrote {study.out} (and figures, {study.out.stem}.json) in {wall:.0f} s")
    return 0 if not failed_workers and all(r.status == "trained" for r in study.runs) else 1


if __name__ == "__main__":
    sys.exit(main())
