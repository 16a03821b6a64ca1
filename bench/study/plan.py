"""The plan: the study's settings (conf/case_study.yaml + the command line), its training runs,
the sampling settings ("cells") scored for each run, and where every file goes.

A run is one (data set, field, seed); its directory is ``<root>/runs/<data set>/<field>/seed<k>``
and its cached scores live under ``<run>/case_study/``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from .util import CONF, override_root


@dataclass
class Run:
    """One training run: ``overrides`` are its train.py overrides, in the order they are
    passed (data set, field, ``train_overrides``, budget, command line, seed)."""
    dataset: str
    field: str
    seed: int
    overrides: list[str]
    run_dir: Path
    status: str = "planned"      # planned | trained | failed
    train_seconds: float | None = None


@dataclass
class Study:
    """The resolved settings (``cfg``: conf/case_study.yaml's keys), where runs and report go,
    the command line's pass-through train.py overrides and the runs."""
    cfg: dict
    root: Path
    out: Path
    passthrough: list[str]
    runs: list[Run] = field(default_factory=list)
    workers: str = "one process"   # how the runs were shared out (for the report)
    code: str = "unknown"          # library code version the scores are made with


@dataclass(frozen=True)
class Cell:
    """One scored sampling setting of a run; ``key`` names its cache file and results entry."""
    key: str
    solver: str
    steps: int | None = None          # None: adaptive
    overrides: tuple = ()
    eps: float | None = None          # noise probe: relative noise on the prediction


def dataset_overrides(overrides: list[str]) -> list[str]:
    """The command line's ``dataset=`` / ``experiment=`` overrides: they replace the study's
    data sets with one of their own."""
    return [o for o in overrides if "=" in o and override_root(o) in ("dataset", "experiment")]


def load_study(args) -> dict:
    """conf/case_study.yaml (``args.config``) with ``--smoke``'s section merged over it, then
    the command line's options (``args``: see cli.parse_args) over that."""
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
        for key in ("steps", "seeds", "solvers", "n"):
            if getattr(args, key) is not None:
                ds[key] = getattr(args, key)
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
    """Fills ``study.runs``: every data set × field × seed."""
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


# --- solvers and NFE budgets ------------------------------------------------------------------
def build_solver(name: str, steps: int | None = None, overrides=()):
    """The solver of ``conf/solver/<name>.yaml`` with ``steps`` and ``solver.key=value``
    overrides."""
    from hydra.utils import instantiate

    path = CONF / "solver" / f"{name}.yaml"
    if not path.is_file():
        raise SystemExit(f"no solver config {path}; choose one of "
                         f"{sorted(p.stem for p in path.parent.glob('*.yaml'))}")
    scfg = OmegaConf.load(path)
    dotlist = [o.split("solver.", 1)[1] for o in overrides]
    scfg = OmegaConf.merge(scfg, OmegaConf.from_dotlist(dotlist))
    if steps is not None:
        scfg.steps = int(steps)
    return instantiate(scfg)


@functools.cache
def solver_kind(name: str):
    """The solver ``conf/solver/<name>.yaml`` builds, at its configured settings: the one place
    its NFE per step (``steps_within``) and form (``needs_schedule``) come from."""
    return build_solver(name)


def steps_for(solver: str, nfe: int) -> int:
    """The most steps of ``solver`` whose NFE fits the budget ``nfe``."""
    try:
        return solver_kind(solver).steps_within(int(nfe))
    except ValueError as err:
        raise SystemExit(f"solver {solver!r} cannot be given an NFE budget: {err}") from err


def budgets(study: Study, dataset: str) -> list[int]:
    """The NFE budgets of a data set: its own ``nfe`` list, else the study's."""
    return [int(b) for b in study.cfg["datasets"][dataset].get("nfe") or study.cfg["nfe"]]


def adaptive_of(study: Study, dataset: str) -> dict | None:
    """The adaptive solver's settings for a data set (``adaptive: false`` in it: none)."""
    if study.cfg["datasets"][dataset].get("adaptive") is False:
        return None
    return study.cfg.get("adaptive") or None


def grid_key(solver: str, budget: int) -> str:
    return f"{solver}-s{steps_for(solver, budget)}"


def grid_cells(study: Study, dataset: str) -> list[Cell]:
    """Every solver at every NFE budget, then the adaptive solver."""
    cells = {}
    for s in study.cfg["datasets"][dataset]["solvers"]:
        for b in budgets(study, dataset):
            cells[grid_key(s, b)] = Cell(grid_key(s, b), s, steps_for(s, b))
    ad = adaptive_of(study, dataset)
    if ad:
        tag = "_".join(o.split("=", 1)[0].split(".")[-1] + o.split("=", 1)[1]
                       for o in ad.get("overrides", []))
        key = f"adaptive-{ad['solver']}" + (f"-{tag}" if tag else "")
        cells[key] = Cell(key, ad["solver"], None, tuple(ad.get("overrides", [])))
    return list(cells.values())


# --- files ------------------------------------------------------------------------------------
def cache_dir(study: Study, run: Run) -> Path:
    ds = study.cfg["datasets"][run.dataset]
    return run.run_dir / "case_study" / f"n{int(ds['n'])}-seed{int(study.cfg['eval']['seed'])}"


def likelihood_key(study: Study) -> str:
    lk = study.cfg["likelihood"]
    return "likelihood-" + "-".join(f"{k}{lk[k]}" for k in sorted(lk))


def figure_file(study: Study, run: Run) -> Path:
    """The samples (and trajectories) drawn for the report's per-field figure."""
    f = study.cfg["figures"]
    k = steps_for(f["solver"], f["nfe"])
    return (run.run_dir / "case_study" /
            f"figure-{f['solver']}-s{k}-{f['n_points']}-{f['n_images']}.npz")


def first_seed(study: Study, run: Run) -> bool:
    return run.seed == int(study.cfg["datasets"][run.dataset]["seeds"][0])
