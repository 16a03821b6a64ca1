"""Gallery of the generative ODE of every built-in field on the same 2-D data: no training.

Each field is built from its own ``conf/physics/<name>.yaml`` (defaults, through Hydra), and
its **exact** field of a small toy set (:class:`~unified_ode.physics.exact.ExactPosterior`)
drives Heun's method from prior samples to the data. Top row: the paths in the data plane
(grey dots: the data; black dots: where the paths end). Bottom row: the same paths as field
lines in the ``(t, x_1)`` half-space, ``t`` on a log axis, prior on the right.

    python bench/field_gallery.py                       # writes docs/fields.png (< 1 minute)
    python bench/field_gallery.py --data moons --fields poisson ve --out /tmp/g.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unified_ode.data.toy2d import TOY_SETS, toy_samples  # noqa: E402
from unified_ode.parametrisation import ProbabilityFlow  # noqa: E402
from unified_ode.solvers import Heun  # noqa: E402

FIELDS = ["poisson", "pfgmpp", "ve", "vp", "linear", "radial", "radial_general"]


def build_field(name: str):
    """The field of ``conf/physics/<name>.yaml`` with its default settings."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="validate", overrides=[f"physics={name}"])
    return instantiate(cfg.physics)


def exact_paths(field, data: torch.Tensor, n: int, steps: int, seed: int):
    """``(trajectory (K, n, 2), times (K,), final (n, 2))`` of the exact-field ODE."""
    x_T = field.sample_prior(n, (2,), generator=torch.Generator().manual_seed(seed),
                             dtype=torch.float64)
    solver = Heun(steps=steps)
    res = solver.solve(ProbabilityFlow.exact(field, data), x_T, solver.time_grid(field),
                       record_every=1)
    return res.trajectory, res.trajectory_times, res.x


def draw(fields, data, n_paths: int, steps: int, seed: int, out: Path) -> list[str]:
    data_np = data.numpy()
    lo, hi = data_np.min(0), data_np.max(0)
    pad = 0.35 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    fig, axes = plt.subplots(2, len(fields), figsize=(3.3 * len(fields), 6.6), squeeze=False)
    lines = []
    for k, name in enumerate(fields):
        start = time.perf_counter()
        field = build_field(name)
        traj, times, final = exact_paths(field, data, n_paths, steps, seed)
        traj_np, t_np, final_np = traj.numpy(), times.numpy(), final.numpy()
        err = torch.cdist(final, data).min(1).values
        lines.append(f"{name}: median distance of the ODE's end points to the data "
                     f"{float(err.median()):.1e}, {time.perf_counter() - start:.1f} s")
        top, bottom = axes[0, k], axes[1, k]
        colors = plt.cm.viridis(np.linspace(0, 1, traj_np.shape[1]))
        for i in range(traj_np.shape[1]):
            top.plot(traj_np[:, i, 0], traj_np[:, i, 1], lw=0.5, alpha=0.5, color=colors[i])
            keep = t_np > 0
            bottom.plot(t_np[keep], traj_np[keep, i, 0], lw=0.5, alpha=0.5, color=colors[i])
        top.scatter(data_np[:, 0], data_np[:, 1], s=14, c="0.6", zorder=3)
        top.scatter(final_np[:, 0], final_np[:, 1], s=4, c="k", zorder=4)
        top.set_xlim(lo[0], hi[0])
        top.set_ylim(lo[1], hi[1])
        top.set_aspect("equal")
        top.set_title(f"{name}\n{_subtitle(field)}", fontsize=9)
        top.set_xticks([])
        top.set_yticks([])
        bottom.set_xscale("log")
        bottom.set_ylim(lo[0], hi[0])
        bottom.set_xlabel("t (log)")
        if k == 0:
            bottom.set_ylabel("$x_1$")
            top.set_ylabel("data plane")
    fig.suptitle(f"Exact-field ODE paths from each prior to the same {len(data)} points "
                 f"(Heun, {steps} steps; no training)", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return lines


def _subtitle(field) -> str:
    """Two short lines: the time range, then the noise law (or the radial CDF)."""
    info = field.describe()
    law = info.get("noise") or (f"psi={info['psi']}" if "psi" in info else "")
    if info.get("prior") and info.get("prior") not in str(law):
        law = f"{law}, prior {info['prior']}"
    law = str(law).replace("multivariate Cauchy", "Cauchy").replace("radial profile ", "")
    return f"t in [{field.t_min:g}, {field.t_max:g}]\n{law[:34]}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="eight_gaussians", choices=sorted(TOY_SETS))
    parser.add_argument("--n-data", type=int, default=48, help="points of the toy set")
    parser.add_argument("--n-paths", type=int, default=160, help="ODE paths per field")
    parser.add_argument("--steps", type=int, default=40, help="Heun steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fields", nargs="+", default=FIELDS)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "fields.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = toy_samples(args.data, args.n_data, seed=args.seed).to(torch.float64)
    for line in draw(args.fields, data, args.n_paths, args.steps, args.seed, args.out):
        print(line)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
