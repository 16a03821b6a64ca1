"""Why few-step errors on exact fields are large: the share of samples that end on another
training point than the reference solution.

    python bench/solvers_diag.py --field ve --data toy2d --nfe 5

On the exact field of a finite data set every ODE solution ends on a training point, so the
RMS error of ``bench/solvers.py`` is made of samples that reach a *different* point than the
reference (dopri5 at rtol = atol = 1e-8 in ln t). For one field, data set and NFE this prints,
per solver (ours on the default and a GITS grid, k-diffusion's DPM-Solver++(2M)): the RMS
error, the share of samples whose nearest training point differs from the reference's, the
RMS over the others, and the share of the squared error carried by the switched samples.
Same data sets and prior draws as ``bench/solvers.py`` (``--n`` of them, seed 0); the GITS
grid is fitted on 128 other draws (seed 1), 64 fine points.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.solvers import F64, REF_TOL, affine_fields, datasets, rms  # noqa: E402
from unified_ode.interop import KDiffusionDenoiser, load_k_diffusion  # noqa: E402
from unified_ode.parametrisation import Denoiser, ProbabilityFlow  # noqa: E402
from unified_ode.solvers import IPNDM, Dopri5, Euler, UniPC  # noqa: E402
from unified_ode.solvers.gits import optimise_grid  # noqa: E402


def main(argv=None) -> list[tuple]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--field", default="ve")
    parser.add_argument("--data", default="toy2d", choices=("toy2d", "digits"))
    parser.add_argument("--nfe", type=int, default=5)
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    fields, skipped = affine_fields([args.field])
    if args.field not in fields:
        raise SystemExit(f"--field {args.field}: not an affine field of conf/physics "
                         f"({skipped.get(args.field, 'unknown')})")
    fld = fields[args.field]
    data = next(d for name, d in datasets(False).items() if name.startswith(args.data))
    flow = ProbabilityFlow.exact(fld, data, Denoiser(fld))
    shape = tuple(data.shape[1:])
    x_T = fld.sample_prior(args.n, shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    ref_solver = Dopri5(steps=2, rtol=REF_TOL, atol=REF_TOL, time_variable="log")
    ref = ref_solver.solve(flow, x_T, ref_solver.time_grid(fld)).x
    fit = IPNDM(steps=args.nfe)
    x_fit = fld.sample_prior(128, shape, dtype=F64, generator=torch.Generator().manual_seed(1))
    gits = optimise_grid(fit, flow, fit.time_grid(fld), x_fit, fine_points=64, substeps=2).times
    default = fit.time_grid(fld)
    out = {"ipndm": IPNDM(steps=args.nfe).solve(flow, x_T, default).x,
           "unipc": UniPC(steps=args.nfe).solve(flow, x_T, default).x,
           "ipndm+gits": IPNDM(steps=args.nfe).solve(flow, x_T, gits).x}
    kd, reason = load_k_diffusion()
    den = KDiffusionDenoiser(flow, fld)
    if kd is not None and den.sigma_max < float("inf"):
        times = Euler(steps=args.nfe).time_grid(fld)
        z = kd.sample_dpmpp_2m(den, den.to_k(x_T, times[0]), den.sigmas(times), disable=True)
        out["k_dpmpp_2m"] = den.from_k(z, 0.0)

    def nearest(x):
        return torch.cdist(x.flatten(1), data.flatten(1)).argmin(1)

    ref_pt = nearest(ref)
    rows = []
    print(f"{args.field} on {args.data}, NFE {args.nfe}, {args.n} draws; GITS grid "
          f"{[round(t, 4) for t in gits.tolist()]}")
    print("| solver | RMS error | share on another point | RMS of the others | "
          "share of squared error from switched samples |")
    print("|---|---|---|---|---|")
    for name, x in out.items():
        e = (x - ref).flatten(1).pow(2).mean(1)
        moved = nearest(x) != ref_pt
        rest = float(e[~moved].mean().sqrt()) if (~moved).any() else 0.0
        share = float(e[moved].sum() / e.sum()) if e.sum() > 0 else 0.0
        rows.append((name, rms(x, ref), float(moved.float().mean()), rest, share))
        print(f"| {name} | {rows[-1][1]:.3g} | {rows[-1][2]:.2f} | {rest:.2g} | {share:.2f} |")
    return rows


if __name__ == "__main__":
    main()
