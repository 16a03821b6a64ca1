"""Minibatch couplings, measured: does pairing data and noise by OT straighten the field lines
and make few-step sampling better, for each force field? (issue 19)

    python bench/couplings.py                 # default study -> docs/couplings.md (+ .png, .json)
    python bench/couplings.py --quick   # a tiny run for development -> outputs/couplings_quick/

For every data set x field x coupling x seed it trains a model with ``train.py`` (MLP, the same
budget for all: ``--steps`` at ``--batch``; resumable: a finished run is reused, an interrupted
one continued), then, on the EMA weights and the same prior noise for every model:

* sample quality: sliced Wasserstein (sw@2k) against 2,000 held-out points at NFE 2, 5, 10, 35
  with Euler and with the best fixed-step solver for the field (``dpmpp2m`` for affine fields),
  mean ± std over the seeds;
* straightness: mean squared distance of a 100-step Euler trajectory from the chord between its
  end points, relative to the chord's squared length (0 = straight lines);
* training-step cost: one objective + backward + Adam step at batch 512 with each coupling
  variant (whole batch and ``block_size`` 128/64), on the same network: CPU time in this
  process, 1 thread, the variants alternated step by step, median of 30 steps; and each plan's
  mean squared pair distance.

``--report-only`` writes the page from the finished runs under ``--root``; the page names every
invocation that trained them (``invocations.json`` in the root).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

FIELDS = {  # name -> physics overrides
    "linear": ["physics=linear"],
    "ve": ["physics=ve"],
    "pfgmpp_D128": ["physics=pfgmpp", "physics.D=128"],
    "poisson": ["physics=poisson"],
}
#: name -> coupling overrides ("ot_b64": exact OT on bisection blocks of 64, the cheap variant)
COUPLINGS = {"independent": ["coupling=independent"], "ot": ["coupling=ot"],
             "ot_b64": ["coupling=ot", "coupling.block_size=64"]}
#: data set -> dataset overrides (toy sets: the toy2d module's name)
IMAGE_SETS = {"digits": ["dataset=digits"]}
NFES = (2, 5, 10, 35)
NETWORK = ["network.width=128", "network.depth=3", "network.time_embed_dim=64"]


# --- training ---------------------------------------------------------------------------------
def run_dir(root: Path, data: str, field: str, coupling: str, seed: int) -> Path:
    return root / data / f"{field}_{coupling}_s{seed}"


def train(run: Path, data: str, field: str, coupling: str, seed: int, steps: int, batch: int,
          log=print) -> None:
    """Train (or continue) one model with train.py; a run whose marker exists is reused."""
    done = run / "done.json"
    data_overrides = IMAGE_SETS.get(data, [f"dataset.name={data}"])
    overrides = [*FIELDS[field], *COUPLINGS[coupling], *data_overrides,
                 f"dataset.batch_size={batch}", f"seed={seed}", f"trainer.max_steps={steps}",
                 *NETWORK, "optim.lr=2e-3", "~callbacks.metrics", "~callbacks.best",
                 "~callbacks.figures", "callbacks.checkpoint.every_n_train_steps=500",
                 "logger=csv"]
    if done.is_file():
        if json.loads(done.read_text())["overrides"] != overrides:
            raise SystemExit(f"{run} was trained with other overrides; remove it or use "
                             "another --root")
        return
    resume = ["resume=true"] if (run / "checkpoints" / "last.ckpt").is_file() else []
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={run}",
                           *overrides, *resume], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"training {run} failed:\n{proc.stderr[-3000:]}")
    seconds = time.perf_counter() - start
    done.write_text(json.dumps({"overrides": overrides, "seconds": seconds}))
    log(f"  trained {run.relative_to(run.parents[1])} in {seconds:.0f} s")


# --- scoring ----------------------------------------------------------------------------------
def load(run: Path):
    from unified_ode.app.build import build_module
    from unified_ode.app.runs import LAST_CKPT, load_run_config, load_weights

    cfg, _ = load_run_config(run)
    module, dm = build_module(cfg)
    load_weights(module, run / LAST_CKPT, "run network", ema=True)
    return module.eval(), dm


def straightness(traj: torch.Tensor) -> float:
    """Mean squared distance of trajectory states ``(K, B, *shape)`` from the line through their
    end points, over the mean squared chord length (0 for straight field lines)."""
    traj = traj.flatten(2)
    start, end = traj[0], traj[-1]
    chord = end - start
    length2 = chord.pow(2).sum(1).clamp_min(1e-12)
    rel = traj - start
    along = (rel * chord).sum(2, keepdim=True) / length2[:, None]
    off = rel - along * chord
    return float(off.pow(2).sum(2).mean() / length2.mean())


def score(run: Path, n: int = 2000) -> dict:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from unified_ode.metrics.points import sliced_wasserstein

    module, dm = load(run)
    dm.setup("fit")
    ref = dm.heldout(n)
    x_T = module.field.sample_prior(n, tuple(dm.data_shape),
                                    generator=torch.Generator().manual_seed(1234))
    best = "dpmpp2m" if module.field.schedule() is not None else "lms"
    out = {"best_solver": best}
    for name in ("euler", best):
        cfg = OmegaConf.load(ROOT / "conf" / "solver" / f"{name}.yaml")
        for nfe in NFES:
            solver = instantiate(cfg)
            solver = instantiate(cfg, steps=solver.steps_within(nfe))
            res = module.sample(x_T=x_T, solver=solver)
            key = "euler" if name == "euler" else "best"
            out[f"{key}@{nfe}"] = sliced_wasserstein(res.x.float(), ref.float())
            out[f"{key}@{nfe}_nfe"] = res.nfe
    out["straightness"] = trajectory_straightness(module, x_T[:500])
    return out


def trajectory_straightness(module, x_T: torch.Tensor) -> float:
    """:func:`straightness` of 100-step Euler trajectories from the prior states ``x_T``."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ROOT / "conf" / "solver" / "euler.yaml")
    res = module.sample(x_T=x_T, solver=instantiate(cfg, steps=100), record_every=1)
    return straightness(res.trajectory.double())


def rescore_straightness(run: Path, n: int = 500) -> float:
    """The straightness of ``run`` alone (a cache entry without one is completed by this)."""
    module, dm = load(run)
    x_T = module.field.sample_prior(2000, tuple(dm.data_shape),
                                    generator=torch.Generator().manual_seed(1234))
    return trajectory_straightness(module, x_T[:n])


#: step-cost variants: name -> coupling overrides
COST_BATCH = 512
COST_VARIANTS = {"independent": ["coupling=independent"], "ot": ["coupling=ot"],
                 "ot_b128": ["coupling=ot", "coupling.block_size=128"],
                 "ot_b64": ["coupling=ot", "coupling.block_size=64"],
                 "sinkhorn": ["coupling=sinkhorn"],
                 "sinkhorn_b64": ["coupling=sinkhorn", "coupling.block_size=64"]}


def step_cost(field_name: str, batch: int = COST_BATCH, repeats: int = 30) -> dict:
    """CPU seconds per training step (objective + backward + Adam) at ``batch`` per coupling
    variant (1 thread; the variants alternate step by step, so a change in the machine's load
    hits all alike; median over ``repeats``), and each coupling's mean squared distance between
    paired data and prior samples ``||y − s(t_max)·eps||²`` (independent: the unpaired draws)."""
    from hydra import compose, initialize_config_dir

    from unified_ode.app.build import build_module
    from unified_ode.objectives.couplings import pair_cost

    torch.set_num_threads(1)
    setups = {}
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        for name, overrides in COST_VARIANTS.items():
            cfg = compose("train", overrides=[*FIELDS[field_name], *overrides, *NETWORK])
            module, dm = build_module(cfg)
            dm.setup("fit")
            y = dm.train_tensor()[:batch]
            opt = torch.optim.Adam(module.model.parameters(), lr=1e-4)
            setups[name] = (module, y, opt)
    times = {name: [] for name in setups}
    for i in range(repeats + 3):
        for name, (module, y, opt) in setups.items():
            start = time.process_time()
            loss = module.objective(module.model, module.field, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i >= 3:
                times[name].append(time.process_time() - start)
    out = {name: statistics.median(v) for name, v in times.items()}
    module, y, _ = setups["independent"]
    field = module.field
    eps = field.sample_noise(y.double(), generator=torch.Generator().manual_seed(0))
    z = field.prior_scale() * eps
    cost = torch.as_tensor(pair_cost(y.double(), z))
    rows = torch.arange(len(y))
    distance = {"independent": float(cost[rows, rows].mean())}
    for name, (module, _, _) in setups.items():
        if module.objective.coupling.pairs:
            idx = module.objective.coupling.pair(y.double(), z,
                                                 generator=torch.Generator().manual_seed(0))
            distance[name] = float(cost[rows, idx].mean())
    return {"seconds": out, "pair_distance": distance}


# --- report -----------------------------------------------------------------------------------
def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def fmt(values: list[float], spec: str = ".3f") -> str:
    if len(values) == 1:
        return format(values[0], spec)
    return f"{format(statistics.mean(values), spec)} ± {format(statistics.stdev(values), spec)}"


def rows_of(results: dict, data: str, field: str, coupling: str) -> list[dict]:
    return [results[k] for k in sorted(results) if k.startswith(f"{data}/{field}_{coupling}_s")]


def report(results: dict, costs: dict, args, seconds: float, out: Path) -> None:
    lines = ["# Minibatch couplings: straighter field lines, fewer steps?", "",
             "The runs were trained and scored by " + ", ".join(f"`{c}`" for c in args.commands)
             + "; this page was written by "
             f"`{' '.join(['python', 'bench/couplings.py', *sys.argv[1:]])}` "
             f"({seconds / 60:.0f} min for this invocation, finished runs reused; "
             f"{os.cpu_count()} cores, shared); {args.steps} training steps at batch "
             f"{args.batch}, MLP 128×3, seeds {args.seeds}; sw against held-out points (toy "
             "sets: 2,000; digits: its 10% held-out split, 180 images) on the EMA weights, the "
             "same prior noise for every model; mean ± std over seeds. `best` is `dpmpp2m` "
             "(NFE = steps). Couplings: `ot` exact OT on the whole batch, `ot_b64` exact OT on "
             "bisection blocks of 64 (`coupling=ot coupling.block_size=64`). Straightness: mean "
             "squared distance of 100-step Euler trajectories from their chords over the mean "
             "squared chord length (0: straight).", ""]
    for data in args.data:
        lines += [f"## {data}", "",
                  "| field | coupling | " + " | ".join(f"Euler NFE {k}" for k in NFES)
                  + " | " + " | ".join(f"best NFE {k}" for k in NFES) + " | straightness |",
                  "|---|---|" + "---|" * (2 * len(NFES) + 1)]
        for field in args.fields:
            for coupling in args.couplings:
                rows = rows_of(results, data, field, coupling)
                if not rows:
                    continue
                cells = [fmt([r[f"{kind}@{k}"] for r in rows]) for kind in ("euler", "best")
                         for k in NFES]
                cells.append(fmt([r["straightness"] for r in rows], ".2e"))
                lines.append(f"| {field} | {coupling} | " + " | ".join(cells) + " |")
        lines.append("")
    names = list(COST_VARIANTS)
    cached = " Measured by an earlier invocation (cached in the root's step_cost.json)." \
        if args.no_cost and costs else ""
    lines += [f"## Training-step cost at batch {COST_BATCH} (checkerboard, 1 thread, CPU time)",
              "", cached.strip() + (" " if cached else "")
              + "CPU milliseconds per step (objective + backward + Adam step; variants "
              "alternated step by step, median of 30) and, in brackets, the ratio to "
              "`independent`. `_b128`/`_b64`: `coupling.block_size=128`/`64`.", "",
              "| field | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for field, c in costs.items():
        sec = c["seconds"]
        base = sec["independent"]
        lines.append(f"| {field} | " + " | ".join(
            f"{1000 * sec[n]:.1f}" + ("" if n == "independent" else f" ({sec[n] / base:.2f}×)")
            for n in names) + " |")
    lines += ["", "Mean squared distance `||y − s(t_max)·eps||²` between paired data and prior "
              f"samples at batch {COST_BATCH} (what the plans minimise; sinkhorn draws partners "
              "with replacement, so it can undercut the exact permutation):", "",
              "| field | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for field, c in costs.items():
        d = c["pair_distance"]
        lines.append(f"| {field} | " + " | ".join(f"{d[n]:.4g}" for n in names) + " |")
    lines.append("")
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


def plot(results: dict, args, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(args.data)
    fig, axes = plt.subplots(2, n, figsize=(5 * n, 8), squeeze=False)
    styles = {"independent": ":", "ot": "-", "ot_b64": "--"}
    for ax, bar_ax, data in zip(axes[0], axes[1], args.data):
        labels, values, colors = [], [], []
        for fi, field in enumerate(args.fields):
            for coupling in args.couplings:
                rows = rows_of(results, data, field, coupling)
                if not rows:
                    continue
                ys = [statistics.mean(r[f"euler@{k}"] for r in rows) for k in NFES]
                ax.plot(NFES, ys, styles.get(coupling, "-."), color=f"C{fi}", marker="o",
                        label=f"{field} {coupling}")
                labels.append(f"{field}\n{coupling}")
                values.append(statistics.mean(r["straightness"] for r in rows))
                colors.append(f"C{fi}")
        ax.set(xscale="log", yscale="log", xlabel="NFE (Euler)", ylabel="sw", title=data)
        ax.set_xticks(NFES, [str(k) for k in NFES])
        ax.minorticks_off()
        ax.legend(fontsize=7)
        bar_ax.bar(range(len(values)), values, color=colors)
        bar_ax.set_xticks(range(len(values)), labels, fontsize=6, rotation=90)
        bar_ax.set(yscale="log", ylabel="straightness (0 = straight)",
                   title=f"{data}: deviation from the chord")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny run (200 steps, linear only)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--data", nargs="+", default=["checkerboard", "moons"])
    p.add_argument("--fields", nargs="+", default=list(FIELDS), choices=list(FIELDS))
    p.add_argument("--couplings", nargs="+", default=list(COUPLINGS), choices=list(COUPLINGS))
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: report the finished runs under --root (the page lists "
                        "the invocations that trained them)")
    p.add_argument("--no-cost", action="store_true", help="skip the step-cost measurement")
    p.add_argument("--root", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.seeds, args.data, args.fields = 200, [0], ["checkerboard"], ["linear"]
    name = "couplings_quick" if args.quick else "couplings"
    args.root = args.root or ROOT / "outputs" / name
    args.out = args.out or (ROOT / "outputs" / name / "couplings.md" if args.quick
                            else ROOT / "docs" / "couplings.md")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    cache = args.root / "scores.json"
    results = json.loads(cache.read_text()) if cache.is_file() else {}
    invocations = args.root / "invocations.json"
    commands = json.loads(invocations.read_text()) if invocations.is_file() else []
    command = " ".join(["python", "bench/couplings.py", *(argv if argv is not None
                                                          else sys.argv[1:])])
    if not args.report_only and command not in commands:
        invocations.parent.mkdir(parents=True, exist_ok=True)
        invocations.write_text(json.dumps([*commands, command], indent=1))
        commands.append(command)
    args.commands = commands
    for data in [] if args.report_only else args.data:
        for field in args.fields:
            for coupling in args.couplings:
                for seed in args.seeds:
                    run = run_dir(args.root, data, field, coupling, seed)
                    key = f"{data}/{run.name}"
                    train(run, data, field, coupling, seed, args.steps, args.batch)
                    if key not in results or results[key].get("steps") != args.steps:
                        results[key] = {**score(run), "steps": args.steps}
                    elif "straightness" not in results[key]:
                        results[key]["straightness"] = rescore_straightness(run)
                    else:
                        continue
                    cache.write_text(json.dumps(results, indent=1))
                    print(f"  scored {key}: euler@10 {results[key]['euler@10']:.3f}, "
                          f"straightness {results[key]['straightness']:.3g}", flush=True)
    cost_file = args.root / "step_cost.json"
    if args.no_cost and cost_file.is_file():
        costs = json.loads(cost_file.read_text())
    elif args.no_cost:
        costs = {}
    else:
        costs = {f: step_cost(f) for f in args.fields}
        cost_file.write_text(json.dumps(costs, indent=1))
    report(results, costs, args, time.perf_counter() - start, args.out)
    plot(results, args, args.out.with_suffix(".png"))
    (args.out.with_suffix(".json")).write_text(json.dumps({"scores": results, "step_cost": costs},
                                                          indent=1))


if __name__ == "__main__":
    main()
