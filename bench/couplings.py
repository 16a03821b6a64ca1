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
* training-step cost: one objective + backward + Adam step at batch 512 with each coupling, on
  the same network (in this process, 1 thread, median of repeated timed steps).
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
COUPLINGS = ["independent", "ot"]
NFES = (2, 5, 10, 35)
NETWORK = ["network.width=128", "network.depth=3", "network.time_embed_dim=64"]


# --- training ---------------------------------------------------------------------------------
def run_dir(root: Path, data: str, field: str, coupling: str, seed: int) -> Path:
    return root / data / f"{field}_{coupling}_s{seed}"


def train(run: Path, data: str, field: str, coupling: str, seed: int, steps: int, batch: int,
          log=print) -> None:
    """Train (or continue) one model with train.py; a run whose marker exists is reused."""
    done = run / "done.json"
    overrides = [*FIELDS[field], f"coupling={coupling}", f"dataset.name={data}",
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
    """Mean squared distance of trajectory states ``(K, B, d)`` from the line through their
    end points, over the mean squared chord length (0 for straight field lines)."""
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
    cfg = OmegaConf.load(ROOT / "conf" / "solver" / "euler.yaml")
    res = module.sample(x_T=x_T[:500], solver=instantiate(cfg, steps=100), record_every=1)
    out["straightness"] = straightness(res.trajectory.double())
    return out


def step_cost(field_name: str, batch: int = 512, repeats: int = 30) -> dict:
    """Seconds per training step (objective + backward + Adam) at ``batch`` per coupling."""
    from hydra import compose, initialize_config_dir

    from unified_ode.app.build import build_module

    torch.set_num_threads(1)
    out = {}
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        for coupling in ("independent", "ot", "sinkhorn"):
            cfg = compose("train", overrides=[*FIELDS[field_name], f"coupling={coupling}",
                                              *NETWORK])
            module, dm = build_module(cfg)
            dm.setup("fit")
            y = dm.train_tensor()[:batch]
            opt = torch.optim.Adam(module.model.parameters(), lr=1e-4)
            times = []
            for i in range(repeats + 3):
                start = time.perf_counter()
                loss = module.objective(module.model, module.field, y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if i >= 3:
                    times.append(time.perf_counter() - start)
            out[coupling] = statistics.median(times)
    return out


# --- report -----------------------------------------------------------------------------------
def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def report(results: dict, costs: dict, args, seconds: float, out: Path) -> None:
    lines = ["# Minibatch couplings: straighter field lines, fewer steps?", "",
             f"Written by `{' '.join(['python', 'bench/couplings.py', *sys.argv[1:]])}` in "
             f"{seconds / 60:.0f} min on this machine ({os.cpu_count()} cores, shared); "
             f"{args.steps} training steps at batch {args.batch}, MLP 128×3, seeds "
             f"{args.seeds}; sw@2k against 2,000 held-out points on the EMA weights, the same "
             "prior noise for every model; mean ± std over seeds. `best` is `dpmpp2m` "
             "(NFE = steps).", ""]
    for data in args.data:
        lines += [f"## {data}", "",
                  "| field | coupling | " + " | ".join(f"Euler NFE {k}" for k in NFES)
                  + " | " + " | ".join(f"best NFE {k}" for k in NFES) + " | straightness |",
                  "|---|---|" + "---|" * (2 * len(NFES) + 1)]
        for field in args.fields:
            for coupling in COUPLINGS:
                rows = [results[k] for k in results
                        if k.startswith(f"{data}/{field}_{coupling}_s")]
                if not rows:
                    continue
                cells = [mean_std([r[f"{kind}@{k}"] for r in rows]) for kind in ("euler", "best")
                         for k in NFES]
                cells.append(mean_std([r["straightness"] for r in rows]))
                lines.append(f"| {field} | {coupling} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Training-step cost at batch 512 (1 thread)", "",
              "| field | independent (ms) | ot | sinkhorn |", "|---|---|---|---|"]
    for field, c in costs.items():
        base = c["independent"]
        lines.append(f"| {field} | {1000 * base:.1f} | {1000 * c['ot']:.1f} "
                     f"({c['ot'] / base:.2f}×) | {1000 * c['sinkhorn']:.1f} "
                     f"({c['sinkhorn'] / base:.2f}×) |")
    lines.append("")
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


def plot(results: dict, args, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.data), figsize=(5 * len(args.data), 4), squeeze=False)
    for ax, data in zip(axes[0], args.data):
        for fi, field in enumerate(args.fields):
            for coupling, style in (("independent", "--"), ("ot", "-")):
                rows = [results[k] for k in results
                        if k.startswith(f"{data}/{field}_{coupling}_s")]
                if not rows:
                    continue
                ys = [statistics.mean(r[f"euler@{k}"] for r in rows) for k in NFES]
                ax.plot(NFES, ys, style, color=f"C{fi}", marker="o",
                        label=f"{field} {coupling}")
        ax.set(xscale="log", yscale="log", xlabel="NFE (Euler)", ylabel="sw@2k", title=data)
        ax.set_xticks(NFES, [str(k) for k in NFES])
        ax.legend(fontsize=7)
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
    p.add_argument("--fields", nargs="+", default=list(FIELDS))
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
    for data in args.data:
        for field in args.fields:
            for coupling in COUPLINGS:
                for seed in args.seeds:
                    run = run_dir(args.root, data, field, coupling, seed)
                    key = f"{data}/{run.name}"
                    train(run, data, field, coupling, seed, args.steps, args.batch)
                    if key not in results or results[key].get("steps") != args.steps:
                        results[key] = {**score(run), "steps": args.steps}
                        cache.write_text(json.dumps(results, indent=1))
                        print(f"  scored {key}: euler@10 {results[key]['euler@10']:.3f}, "
                              f"straightness {results[key]['straightness']:.4f}", flush=True)
    costs = {f: step_cost(f) for f in args.fields}
    report(results, costs, args, time.perf_counter() - start, args.out)
    plot(results, args, args.out.with_suffix(".png"))
    (args.out.with_suffix(".json")).write_text(json.dumps({"scores": results, "step_cost": costs},
                                                          indent=1))


if __name__ == "__main__":
    main()
