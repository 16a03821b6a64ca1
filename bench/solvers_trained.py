"""Solver benchmark, second table: FID/KID of *trained* models at few NFE, ours vs k-diffusion.

    python bench/solvers_trained.py --runs <run dir> [<run dir> ...] [--out <prefix>]

For every run directory (e.g. digits models from ``python train.py experiment=digits_ve
trainer.max_steps=2000``), with its EMA weights: at NFE 4, 5, 6, 8, 10 and for each sampling
seed, the same ``--n`` prior draws are integrated by

* ours: ``ipndm`` and ``unipc`` on a GITS grid fitted for that NFE on the model's own
  trajectories (``--fit-n`` other prior draws; :mod:`unified_ode.solvers.gits`), the same
  two on their own grid refined from it (``+opt``: :func:`~unified_ode.solvers.gits.refine_grid`
  on the solver's final-sample error against those trajectories' ends), ``ipndm`` with the
  analytic first step (``μ`` = the training set's mean) on the GITS grid of one step more
  (``+afs``: same NFE), and ``ipndm`` on the field's default grid;
* k-diffusion: ``sample_dpmpp_2m`` and ``sample_lms`` (its best samplers at these NFE on the
  exact-field table) on the field's default grid, through
  :class:`unified_ode.interop.KDiffusionDenoiser` (same checkpoint, same noise);

and scored by :class:`unified_ode.metrics.scoring.SampleScorer` (FID and KID against the training
images, Inception features; ``--extractor random`` for a quick smoke run). The table shows the
mean and spread (min–max) over seeds and the ratio of our best mean FID to k-diffusion's best.
Target (issue 12): ratio ≤ 0.8 at NFE 5 and 10.

``--methods`` picks a subset (Inception features cost minutes per 1000 images on a CPU).
Resumable: every grid and score is kept under ``--parts`` (default
``outputs/solvers_trained_parts/``; keyed by run, method, NFE, seed, sample count and
extractor) and a rerun reuses it. ``--reference-nfe 50`` adds the model's converged score
(ipndm at 50 NFE on the same draws): a sampler cannot beat it by much at any NFE, so it bounds
the ratio the table can reach.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from datetime import datetime
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unified_ode.app.sample import load_model  # noqa: E402
from unified_ode.interop import KDiffusionDenoiser, load_k_diffusion  # noqa: E402
from unified_ode.metrics.scoring import SampleScorer  # noqa: E402
from unified_ode.solvers import IPNDM, UniPC  # noqa: E402
from unified_ode.solvers.gits import optimise_grid, refine_grid, teacher_end  # noqa: E402

NFES = (4, 5, 6, 8, 10)
PEERS = {"k_dpmpp_2m": "sample_dpmpp_2m", "k_lms": "sample_lms"}
OURS = {"ipndm": IPNDM, "unipc": UniPC}
#: ``ipndm+gits+afs``: iPNDM with the analytic first step (solvers/ipndm.py; ``μ`` = the
#: training set's mean) on the GITS grid fitted for one step more: the same NFE, one more step
#: (the first needs no network call).
#: ``ipndm+opt+afs``: the same, on that grid refined for this solver (``refine_grid``).
METHODS = ("ipndm", "ipndm+gits", "unipc+gits", "ipndm+opt", "unipc+opt", "ipndm+gits+afs",
           "ipndm+opt+afs", *PEERS)


def load(run: str):
    cfg = OmegaConf.create({"run": run, "ckpt_path": None, "ema": True})
    loaded = load_model(cfg, [])
    return loaded.module, loaded.datamodule


@torch.no_grad()
def samples_for(module, nfe: int, x_T: torch.Tensor, grids: dict, kd, methods,
                data_mean=0.0) -> dict:
    """``{method: samples}`` at one NFE from the prior draws ``x_T``; ``grids[(kind, nfe)]``:
    the fitted grids (``kind``: ``gits``, ``ipndm+opt``, ``unipc+opt``); ``data_mean``: the
    training set's mean (one sample's shape), the analytic first step's ``μ``."""
    flow = module.flow()
    out = {}
    default = IPNDM(steps=nfe).time_grid(module.field)
    for method in methods:
        if method in PEERS:
            if kd is None:
                continue
            den = KDiffusionDenoiser(flow, module.field)
            z = getattr(kd, PEERS[method])(den, den.to_k(x_T, default[0]),
                                           den.sigmas(default).to(x_T), disable=True)
            out[method] = den.from_k(z, 0.0)
            continue
        if method.endswith("+afs"):
            grid = grids[("gits", nfe + 1) if method == "ipndm+gits+afs" else (method, nfe)]
            out[method] = IPNDM(steps=nfe + 1, afs=True, afs_mean=data_mean).solve(
                flow, x_T, grid).x
            continue
        name, _, kind = method.partition("+")
        grid = {"": default, "gits": grids.get(("gits", nfe)),
                "opt": grids.get((method, nfe))}[kind]
        out[method] = OURS[name](steps=nfe).solve(flow, x_T, grid).x
    return out


def fit_grids(module, nfe: int, args, methods, parts: Path, log=print) -> tuple[dict, float]:
    """The GITS grid at ``nfe`` (and the ``+opt`` grids among ``methods``), from
    ``--fit-n`` prior draws of seed ``10000 + nfe``; reused from ``parts`` when stored."""
    path = parts / f"grids-nfe{nfe}-fit{args.fit_n}-fine{args.fine_points}.json"
    stored = json.loads(path.read_text()) if path.exists() else None
    missing = [m for m in methods if m.endswith("+opt")
               and (stored is None or m not in stored["grids"])]
    if stored is not None and not missing:
        log(f"  grids NFE {nfe}: reused {path}")
        return ({(k, nfe): torch.tensor(v, dtype=torch.float64)
                 for k, v in stored["grids"].items()}, stored["seconds"])
    start = time.perf_counter()
    g = torch.Generator().manual_seed(10_000 + nfe)
    x_fit = module.sample_prior(args.fit_n, generator=g)
    solver = IPNDM(steps=nfe)
    default = solver.time_grid(module.field)
    if stored is None:
        fitted = optimise_grid(solver, module.flow(), default, x_fit,
                               fine_points=args.fine_points, substeps=2)
        grids, end, seconds = {"gits": fitted.times}, fitted.teacher_end, 0.0
    else:  # the stored GITS grid, refined for the +opt methods it lacks: no refit
        grids = {k: torch.tensor(v, dtype=torch.float64) for k, v in stored["grids"].items()}
        end = teacher_end(module.flow(), default, x_fit, fine_points=args.fine_points,
                          substeps=2)
        seconds = stored["seconds"]
    for m in missing:
        s = OURS[m.split("+")[0]](steps=nfe)
        r = refine_grid(s, module.flow(), [grids["gits"], s.time_grid(module.field)], x_fit,
                        end)
        grids[m] = r.times
        log(f"  {m} NFE {nfe}: final error on the fitting draws {r.start_error:.4g} -> "
            f"{r.error:.4g} ({r.accepted} moves)")
    seconds += time.perf_counter() - start
    path.write_text(json.dumps({"grids": {k: v.tolist() for k, v in grids.items()},
                                "seconds": seconds}))
    return {(k, nfe): v for k, v in grids.items()}, seconds


def refine_afs_grid(module, nfe: int, gits_grid, data_mean, args, parts: Path,
                    log=print) -> torch.Tensor:
    """The grid of ``ipndm+opt+afs`` at ``nfe``: the GITS grid of ``nfe + 1`` steps refined
    (:func:`~unified_ode.solvers.gits.refine_grid`) for iPNDM with the analytic first step,
    on the draws that grid was fitted on; stored under ``parts``."""
    path = parts / f"grid-ipndm+opt+afs-nfe{nfe}-fit{args.fit_n}-fine{args.fine_points}.json"
    if path.exists():
        return torch.tensor(json.loads(path.read_text())["times"], dtype=torch.float64)
    start = time.perf_counter()
    x_fit = module.sample_prior(args.fit_n, generator=torch.Generator().manual_seed(
        10_000 + nfe + 1))  # the draws of the GITS fit at nfe + 1 (fit_grids)
    solver = IPNDM(steps=nfe + 1, afs=True, afs_mean=data_mean)
    default = IPNDM(steps=nfe + 1).time_grid(module.field)
    end = teacher_end(module.flow(), default, x_fit, fine_points=args.fine_points, substeps=2)
    r = refine_grid(solver, module.flow(), [gits_grid, default], x_fit, end)
    log(f"  ipndm+opt+afs NFE {nfe}: final error on the fitting draws {r.start_error:.4g} -> "
        f"{r.error:.4g} ({r.accepted} moves, {time.perf_counter() - start:.0f} s)")
    path.write_text(json.dumps({"times": r.times.tolist(),
                                "seconds": time.perf_counter() - start}))
    return r.times


def score_entry(scorer, samples: torch.Tensor, seed: int) -> dict:
    """``{"seed", "fid", "kid"}`` of ``samples``: FID and KID for images; for point clouds
    (smoke runs) the sliced Wasserstein distance and MMD in those two fields."""
    m = scorer.score_samples(samples.float())
    fid = next(v for k, v in m.items() if k.startswith(("fid@", "sw@")))
    kid = next(v for k, v in m.items() if k.startswith(("kid@", "mmd@")))
    return {"seed": seed, "fid": float(fid), "kid": float(kid)}


def parts_dir(run: str, args) -> Path:
    """Where the grids and scores of ``run`` are kept (keyed by its resolved path)."""
    key = hashlib.sha1(str(Path(run).resolve()).encode()).hexdigest()[:10]
    return Path(args.parts) / f"{Path(run).name}-{key}"


def score_path(parts: Path, method: str, nfe: int, seed: int, args) -> Path:
    return parts / f"{method}-nfe{nfe}-seed{seed}-n{args.n}-{args.extractor}.json"


def reference_path(parts: Path, seed: int, args) -> Path:
    return (parts / f"reference-ipndm-nfe{args.reference_nfe}-seed{seed}-n{args.n}-"
            f"{args.extractor}.json")


def cached_run(run: str, args) -> dict:
    """``--report-only``: the results of ``run`` from what ``--parts`` holds, nothing computed
    (cells without a stored score stay empty)."""
    module, datamodule = load(run)
    parts = parts_dir(run, args)
    images = getattr(datamodule, "kind", None) == "images"
    results: dict = {"run": run, "field": module.field.name, "scores": {}, "fit_seconds": {},
                     "metrics": ["FID", "KID"] if images else ["SW", "MMD"], "grids": {}}
    for seed in range(args.seeds):
        for nfe in args.nfes:
            for method in args.methods:
                path = score_path(parts, method, nfe, seed, args)
                if path.exists():
                    results["scores"].setdefault(method, {}).setdefault(str(nfe), []).append(
                        json.loads(path.read_text()))
    refs = [json.loads(reference_path(parts, seed, args).read_text())
            for seed in range(args.seeds) if reference_path(parts, seed, args).exists()]
    if args.reference_nfe and refs:
        results["reference"] = {"nfe": args.reference_nfe, "scores": refs}
    return results


def bench_run(run: str, args, kd, log=print) -> dict:
    module, datamodule = load(run)
    module.eval()
    methods = list(args.methods)
    parts = parts_dir(run, args)
    parts.mkdir(parents=True, exist_ok=True)
    scorer = SampleScorer(n_samples=args.n, batch_size=args.n, seed=0,
                          extractor=args.extractor, inception_score=False,
                          kid_subset_size=min(1000, args.n), cache_dir=args.cache_dir)
    scorer.prepare(datamodule)
    images = getattr(datamodule, "kind", None) == "images"
    results: dict = {"run": run, "field": module.field.name, "scores": {}, "fit_seconds": {},
                     "metrics": ["FID", "KID"] if images else ["SW", "MMD"]}
    grids = {}
    # the analytic first step's μ: the training set's mean, one sample's shape (0 where the
    # data module holds no tensor of its training set)
    train = getattr(datamodule, "train_tensor", None)
    data_mean = train().float().mean(0) if callable(train) else 0.0
    with module.use_ema(True):
        if any("+" in m for m in methods):
            afs = any(m.endswith("+afs") for m in methods)  # GITS grids of nfe + 1 steps
            for nfe in sorted({*args.nfes, *(n + 1 for n in args.nfes if afs)}):
                fitted, secs = fit_grids(module, nfe, args,
                                         methods if nfe in args.nfes else [], parts, log)
                grids.update(fitted)
                results["fit_seconds"][nfe] = secs
                log(f"  GITS grid NFE {nfe}: "
                    f"{[round(t, 4) for t in grids[('gits', nfe)].tolist()]} ({secs:.1f} s)")
            if "ipndm+opt+afs" in methods:
                for nfe in args.nfes:
                    grids[("ipndm+opt+afs", nfe)] = refine_afs_grid(
                        module, nfe, grids[("gits", nfe + 1)], data_mean, args, parts, log)
        for seed in range(args.seeds):
            x_T = module.sample_prior(args.n, generator=torch.Generator().manual_seed(seed))
            for nfe in args.nfes:
                todo = [m for m in methods
                        if not score_path(parts, m, nfe, seed, args).exists()]
                samples = (samples_for(module, nfe, x_T, grids, kd, todo, data_mean)
                           if todo else {})
                for method in methods:
                    path = score_path(parts, method, nfe, seed, args)
                    if path.exists():
                        entry = json.loads(path.read_text())
                    elif method in samples:
                        entry = score_entry(scorer, samples[method], seed)
                        path.write_text(json.dumps(entry))
                    else:
                        continue
                    results["scores"].setdefault(method, {}).setdefault(str(nfe), []).append(
                        entry)
                    log(f"  seed {seed} NFE {nfe} {method}: FID {entry['fid']:.2f} "
                        f"KID {entry['kid']:.4f}")
        if args.reference_nfe:
            results["reference"] = reference_scores(module, args, scorer, parts, log)
    results["grids"] = {f"{k}@{n}": v.tolist() for (k, n), v in grids.items()}
    return results


@torch.no_grad()
def reference_scores(module, args, scorer, parts: Path, log=print) -> dict:
    """The model's own converged score: ``ipndm`` with ``--reference-nfe`` steps on the
    field's default grid, from the same prior draws as the table (seed by seed). No solver
    can do much better than this at any NFE, so ``reference / best peer`` is the lowest
    ratio the table can show."""
    nfe = args.reference_nfe
    solver = IPNDM(steps=nfe)
    times = solver.time_grid(module.field)
    entries = []
    for seed in range(args.seeds):
        path = reference_path(parts, seed, args)
        if path.exists():
            entry = json.loads(path.read_text())
        else:
            x_T = module.sample_prior(args.n, generator=torch.Generator().manual_seed(seed))
            entry = score_entry(scorer, solver.solve(module.flow(), x_T, times).x, seed)
            path.write_text(json.dumps(entry))
        log(f"  seed {seed} reference ipndm NFE {nfe}: FID {entry['fid']:.2f} "
            f"KID {entry['kid']:.4f}")
        entries.append(entry)
    return {"nfe": nfe, "scores": entries}


def table(res: dict, nfes=NFES) -> list[str]:
    """Markdown rows of one run: mean (min–max) FID and mean KID per method and NFE (for point
    clouds: sliced Wasserstein and MMD in those columns)."""
    NFES = nfes  # noqa: N806
    first, second = res["metrics"]
    lines = [f"### {res['field']} — `{res['run']}` ({first}, {second})", "",
             "| method | " + " | ".join(f"NFE {n}" for n in NFES) + " |",
             "|---|" + "---|" * len(NFES)]

    def cell(vals):
        f = [v["fid"] for v in vals]
        k = [v["kid"] for v in vals]
        return (f"{sum(f) / len(f):.2f} ({min(f):.2f}–{max(f):.2f}); "
                f"{second} {sum(k) / len(k):.4f}")

    for method, by_nfe in res["scores"].items():
        lines.append(f"| {method} | " + " | ".join(
            cell(by_nfe[str(n)]) if str(n) in by_nfe else "–" for n in NFES) + " |")
    ratios = []
    for n in NFES:
        mean = {m: sum(v["fid"] for v in s[str(n)]) / len(s[str(n)])
                for m, s in res["scores"].items() if str(n) in s}
        ours = [v for m, v in mean.items() if not m.startswith("k_")]
        peers = [v for m, v in mean.items() if m.startswith("k_")]
        ratios.append(f"{min(ours) / min(peers):.2f}" if peers and ours else "–")
    lines += [f"| **ratio ours/k (best mean {first})** | " + " | ".join(ratios) + " |"]
    ref = res.get("reference")
    if ref:
        f = [v["fid"] for v in ref["scores"]]
        ref_mean = sum(f) / len(f)
        floors = []
        for n in NFES:
            peers = [sum(v["fid"] for v in s[str(n)]) / len(s[str(n)])
                     for m, s in res["scores"].items() if m.startswith("k_") and str(n) in s]
            floors.append(f"{ref_mean / min(peers):.2f}" if peers else "–")
        lines += [f"| reference: ipndm NFE {ref['nfe']} (the model's converged {first}) | "
                  f"{ref_mean:.2f} ({min(f):.2f}–{max(f):.2f}) at every NFE |"
                  + " |" * (len(NFES) - 1),
                  "| lowest reachable ratio (reference / k's best) | " + " | ".join(floors)
                  + " |"]
    return lines + [""]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="training run directories")
    parser.add_argument("--out", default=str(ROOT / "docs" / "solver_benchmark_trained"))
    parser.add_argument("--n", type=int, default=1000, help="samples per FID (FID@1k)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--fit-n", type=int, default=256, help="GITS warm-up trajectories")
    parser.add_argument("--fine-points", type=int, default=64)
    parser.add_argument("--extractor", default="inception", choices=("inception", "random"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", default=None, help="reference feature cache")
    parser.add_argument("--nfes", type=int, nargs="+", default=list(NFES))
    parser.add_argument("--parts", default=str(ROOT / "outputs" / "solvers_trained_parts"),
                        help="where grids and scores are kept for reruns")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                        help="methods to score (each costs one FID per NFE and seed)")
    parser.add_argument("--reference-nfe", type=int, default=0,
                        help="also score ipndm at this NFE on the default grid (the model's "
                             "converged score, the floor of every ratio); 0: not scored")
    parser.add_argument("--report-only", action="store_true",
                        help="write the table from the scores --parts holds; compute nothing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    kd, reason = load_k_diffusion()
    start = time.perf_counter()
    results = []
    for run in args.runs:
        print(run, flush=True)
        results.append(cached_run(run, args) if args.report_only else bench_run(run, args, kd))
    minutes = (time.perf_counter() - start) / 60
    command = "python bench/solvers_trained.py " + " ".join(sys.argv[1:])
    md = ["# Solver benchmark on trained models: FID/KID vs NFE", "",
          f"Produced by `{command}` on {datetime.now():%Y-%m-%d %H:%M} "
          f"({torch.get_num_threads()} thread(s), {minutes:.1f} min). FID@{args.n} and KID "
          f"against the training images ({args.extractor} features), mean (min–max) over "
          f"{args.seeds} sampling seed(s); the same prior draws for every method. "
          + (f"**k-diffusion not run: {reason}.**" if reason else ""), ""]
    for res in results:
        md += table(res, args.nfes)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(md))
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print("\n".join(md))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
