"""An image run's samples beside its training images, one PNG with square tiles.

    python bench/image_panels.py --run <run dir> --out docs/digits_poisson.png

Loads the run with :func:`unified_ode.load_run` (EMA weights when the checkpoint has them),
draws ``--n`` samples with the run's own solver and ``--seed`` (the samples ``sample.py
run=<dir> n=<n> seed=<seed>`` writes), and puts them beside the first ``--n`` training images
under titles (:func:`unified_ode.viz.images.panels_array`: one integer magnification for both
axes, so every tile is as square as the images are). The title of the generated panel names
the field, the network, the training steps and the solver's NFE, and the run's last logged
``val/fid`` when its metrics file has one.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def last_logged(run_dir: Path, name: str) -> float | None:
    """The last value of metric ``name`` in the run's CSV logs (None if never logged)."""
    value = None
    for path in sorted(run_dir.glob("**/metrics.csv")):
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if row.get(name):
                    value = float(row[name])
    return value


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="a run directory written by train.py")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--n", type=int, default=100, help="images per panel")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nrow", type=int, default=None, help="tiles per row (default: √n)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not args.force:
        parser.error(f"{out} exists; pass --force to overwrite it")

    import unified_ode
    from unified_ode.viz.images import panels_array, save_png

    run = unified_ode.load_run(args.run)
    if len(run.data_shape) != 3:
        parser.error(f"{args.run} is not an image run (data shape {run.data_shape})")
    result = run.sample(args.n, seed=args.seed, progress=False)
    run.datamodule.setup("fit")
    training = run.datamodule.train_tensor()[: args.n]
    cfg = run.config
    fid = last_logged(Path(args.run), "val/fid")
    generated = (f"generated: {run.field.name}, {cfg.network._target_.rsplit('.', 1)[-1]}, "
                 f"{int(cfg.trainer.max_steps)} steps\n"
                 f"{run.solver.name} NFE {result.nfe}, {'EMA' if run.ema else 'raw'} weights"
                 + (f"; val/fid {fid:.1f}" if fid is not None else ""))
    panel = panels_array([(f"training images ({cfg.dataset._target_.rsplit('.', 1)[-1]})",
                           training), (generated, result.x.clamp(-1, 1))], nrow=args.nrow)
    save_png(out, panel)
    print(f"wrote {out} ({panel.shape[1]} x {panel.shape[0]} pixels)")
    return out


if __name__ == "__main__":
    main()
