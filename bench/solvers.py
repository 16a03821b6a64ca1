"""Solver benchmark: error against a reference solution versus NFE, on exact fields.

    python bench/solvers.py              # full run: writes docs/solver_benchmark.{md,png}
    python bench/solvers.py --quick --out /tmp/bench   # a small run for development

For every affine field in ``conf/physics/`` that supports the denoiser objective, and two fixed
data sets — 2-D ``checkerboard`` (``unified_ode.data.toy_samples``) and 512 ``sklearn`` digits
in 64-d scaled to ``[-1, 1]`` — the exact field of the data set (``ExactPosterior``, float64)
is integrated from the same prior noise by every solver at NFE ∈ {5, 10, 20, 35, 50, 100} on
the field's default grid (plus the final denoising step to ``t = 0``). The error is the RMS
over samples and coordinates of the final states against a reference: adaptive Dormand–Prince
in ``ln t`` at ``rtol = atol = 1e-8`` to ``t_min``, then the same denoising step. The wall
time of each solve is recorded.

Peers: ``k-diffusion``'s ``sample_euler``, ``sample_heun``, ``sample_dpmpp_2m`` and
``sample_lms`` on the same denoiser and the same grids (``pip install -e .[bench]``). They are
written for ``x = y + σ ε``; for ``a = 1, s = t`` fields that is the field itself
(``σ = t``). For the other affine fields they run on ``z = x / a(t)`` with ``σ = s(t)/a(t)`` —
in those variables every affine field's ODE is ``dz/dσ = (z − D)/σ`` — through
:class:`unified_ode.interop.KDiffusionDenoiser`, at the grid's σ values (which map back to the
grid's times to rounding). A field with ``a(t_max) = 0``
(σ = ∞ at the prior, rectified flow) has no such form and runs without the peers.
k-diffusion's ``sampling.py`` is loaded without its package ``__init__`` (which imports clip).

Our solvers also run on GITS grids (``+gits`` rows, NFE ≤ 20), fitted per field, data set and
NFE on other prior draws than the benchmark's (:mod:`unified_ode.solvers.gits`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unified_ode.data.toy2d import toy_samples  # noqa: E402
from unified_ode.interop import KDiffusionDenoiser, load_k_diffusion  # noqa: E402
from unified_ode.parametrisation import Denoiser, ProbabilityFlow  # noqa: E402
from unified_ode.solvers import IPNDM, Dopri5, Euler  # noqa: E402
from unified_ode.solvers.gits import optimise_grid, refine_grid  # noqa: E402

F64 = torch.float64
NFE_TARGETS = (5, 10, 20, 35, 50, 100)
DOPRI_TOLS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
REF_TOL = 1e-8
INVALID_EXAMPLES = {"invalid_power_law"}
#: solvers also run on a GITS grid (one grid per field, data set and NFE, fitted with iPNDM's
#: first-order step on other prior draws than the benchmark's), at NFE <= GITS_MAX_NFE
GITS_SOLVERS = ("ipndm", "unipc", "dpmpp2m")
#: solvers also run on their own refined grid (``+opt``: :func:`refine_grid` from the GITS and
#: the default grid, minimising the solver's final error on the GITS fitting draws)
REFINED_SOLVERS = ("ipndm", "unipc")
GITS_MAX_NFE = 20
#: issue 12's targets: our best error / k-diffusion's best, by NFE
TARGET_RATIO = {5: 0.5, 10: 0.5, 20: 0.7}



def fixed_step_solvers() -> dict:
    """Our fixed-step solvers, discovered from conf/solver/: ``{name: factory(steps)}`` for
    every config whose solver has a fixed NFE per step and ends with the step to t = 0; each
    gets the largest grid within an NFE budget (``Solver.steps_within``)."""
    out = {}
    for path in sorted((ROOT / "conf" / "solver").glob("*.yaml")):
        cfg = OmegaConf.load(path)
        solver = instantiate(cfg)
        if (solver.nfe_for_steps(1) is None or not solver.final_step
                or not getattr(solver, "ode_solver", True)):
            continue
        out[path.stem] = (lambda c: lambda steps: instantiate(c, steps=steps))(cfg)
    return out


OURS = fixed_step_solvers()
# k-diffusion samplers: function name, steps for an NFE budget (its Heun also skips the last
# correction, so 2N − 1 calls)
PEERS = {
    "k_euler": ("sample_euler", lambda nfe: nfe),
    "k_heun": ("sample_heun", lambda nfe: (nfe + 1) // 2),
    "k_dpmpp_2m": ("sample_dpmpp_2m", lambda nfe: nfe),
    "k_lms": ("sample_lms", lambda nfe: nfe),
}


# --- data and fields -------------------------------------------------------------------------
def datasets(quick: bool) -> dict[str, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = torch.from_numpy(load_digits().data[:512]).to(F64) / 8.0 - 1.0  # 0..16 -> [-1, 1]
    return {"toy2d (checkerboard, 1000 pts, d=2)": toy_samples("checkerboard", 1000, 0).to(F64),
            "digits (512 imgs, d=64)": digits}


def affine_fields(only: list[str] | None) -> tuple[dict, dict]:
    """``{name: field}`` of the affine (denoiser-form) fields in conf/physics, and
    ``{name: reason}`` for those left out."""
    fields, skipped = {}, {}
    for path in sorted((ROOT / "conf" / "physics").glob("*.yaml")):
        name = path.stem
        if only and name not in only:
            continue
        cfg = OmegaConf.load(path)
        if name in INVALID_EXAMPLES:
            skipped[name] = "the validator's deliberately invalid example"
            continue
        cfg.pop("defaults", None)
        try:
            f = instantiate(cfg)
        except Exception as err:  # a field that cannot be built on its own
            skipped[name] = f"not buildable ({type(err).__name__}: {err})"[:120]
            continue
        if Denoiser.unsupported(f) is not None or f.schedule() is None:
            skipped[name] = "not affine (no denoiser form)"
            continue
        fields[name] = f
    return fields, skipped


# --- one (field, data set) -----------------------------------------------------------------------
@dataclass
class Run:
    solver: str
    kind: str  # ours | peer | adaptive
    nfe: int
    err: float
    seconds: float
    target: int | None = None
    tol: float | None = None


@dataclass
class Case:
    field: str
    data: str
    runs: list[Run] = field(default_factory=list)
    ref_nfe: int = 0
    ref_seconds: float = 0.0
    note: str = ""
    seconds: float = 0.0  # wall time of the whole case


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())


def run_case(fname, fld, dname, data, n_query, kd, targets, seed=0, log=print,
             gits_fit=(128, 64)) -> Case:
    """Every solver on one exact field; ``gits_fit = (trajectories, fine points)``."""
    flow = ProbabilityFlow.exact(fld, data, Denoiser(fld))

    shape = tuple(data.shape[1:])
    x_T = fld.sample_prior(n_query, shape, generator=torch.Generator().manual_seed(seed),
                           dtype=F64)
    case = Case(fname, dname)
    start = time.perf_counter()
    ref_solver = Dopri5(steps=2, rtol=REF_TOL, atol=REF_TOL, time_variable="log")
    ref = ref_solver.solve(flow, x_T, ref_solver.time_grid(fld))
    case.ref_nfe, case.ref_seconds = ref.nfe, time.perf_counter() - start
    log(f"  reference: dopri5 rtol=atol={REF_TOL:g} in ln t, NFE {ref.nfe}, "
        f"{case.ref_seconds:.1f} s")

    for target in targets:
        for name, make in OURS.items():
            solver = make(steps=make(steps=1).steps_within(target))
            start = time.perf_counter()
            res = solver.solve(flow, x_T, solver.time_grid(fld))
            case.runs.append(Run(name, "ours", res.nfe, rms(res.x, ref.x),
                                 time.perf_counter() - start, target))
        if target <= GITS_MAX_NFE:
            start = time.perf_counter()
            fit_solver = IPNDM(steps=target)
            x_fit = fld.sample_prior(gits_fit[0], shape, dtype=F64,
                                     generator=torch.Generator().manual_seed(seed + 1))
            fitted = optimise_grid(fit_solver, flow, fit_solver.time_grid(fld), x_fit,
                                   fine_points=gits_fit[1], substeps=2)
            grid = fitted.times
            fit_seconds = time.perf_counter() - start
            for name in GITS_SOLVERS:
                solver = OURS[name](steps=target)
                start = time.perf_counter()
                res = solver.solve(flow, x_T, grid)
                case.runs.append(Run(f"{name}+gits", "ours", res.nfe, rms(res.x, ref.x),
                                     time.perf_counter() - start + fit_seconds, target))
            for name in REFINED_SOLVERS:
                solver = OURS[name](steps=target)
                start = time.perf_counter()
                refined = refine_grid(solver, flow, [grid, solver.time_grid(fld)], x_fit,
                                      fitted.teacher_end)
                res = solver.solve(flow, x_T, refined.times)
                case.runs.append(Run(f"{name}+opt", "ours", res.nfe, rms(res.x, ref.x),
                                     time.perf_counter() - start + fit_seconds, target))
        if kd is None:
            continue
        for name, (fn, steps_for) in PEERS.items():
            times = Euler(steps=steps_for(target)).time_grid(fld)
            denoiser = KDiffusionDenoiser(flow, fld)
            if not math.isfinite(denoiser.sigma_max):
                case.note = "no σ-form (a(t_max) = 0): k-diffusion not run"
                continue
            start = time.perf_counter()
            z = getattr(kd, fn)(denoiser, denoiser.to_k(x_T, times[0]), denoiser.sigmas(times),
                                disable=True)
            x = denoiser.from_k(z, 0.0)
            case.runs.append(Run(name, "peer", denoiser.calls, rms(x, ref.x),
                                 time.perf_counter() - start, target))
    for tol in DOPRI_TOLS:
        solver = Dopri5(steps=2, rtol=tol, atol=tol, time_variable="log")
        start = time.perf_counter()
        try:
            res = solver.solve(flow, x_T, solver.time_grid(fld))
            case.runs.append(Run("dopri5", "adaptive", res.nfe, rms(res.x, ref.x),
                                 time.perf_counter() - start, tol=tol))
        except (FloatingPointError, AssertionError, RuntimeError) as err:
            log(f"  dopri5 tol={tol:g} failed: {err}")
    return case


# --- report --------------------------------------------------------------------------------------
def fmt_err(r: Run | None) -> str:
    if r is None:
        return "–"
    s = f"{r.err:.1e}"
    return s if r.target is None or r.nfe == r.target else f"{s} ({r.nfe})"


def best(case: Case, kind: str, target: int) -> Run | None:
    runs = [r for r in case.runs if r.kind == kind and r.target == target]
    return min(runs, key=lambda r: r.err) if runs else None


def report(cases: list[Case], targets, command: str, skipped: dict, kd_reason, n_query,
           seconds: float) -> str:
    lines = ["# Solver benchmark: error vs NFE on exact fields", "",
             f"Produced by `{command}` on {datetime.now():%Y-%m-%d %H:%M} "
             f"({torch.get_num_threads()} torch thread(s), total {seconds / 60:.1f} min, the "
             "sum of the cases' wall times).", "",
             "Exact field (`ExactPosterior`, float64) of two fixed data sets; the same "
             f"{n_query['toy']} (toy) / {n_query['digits']} (digits) prior draws for every "
             "solver; each field's default grid, ending with the denoising step to t = 0. "
             "Error: RMS over samples and coordinates of the final samples against dopri5 in "
             f"ln t at rtol = atol = {REF_TOL:g} (same final denoising step). A cell shows the "
             "error at the largest grid within the NFE budget; the NFE used is in brackets "
             "when it is below the budget (Heun: 2N − 1, RK4: 4(N − 1) + 1).", "",
             "k-diffusion peers (`k_*`) use the same denoiser and grid; for fields with "
             "a ≠ 1 they run on z = x/a, σ = s/a (see `bench/solvers.py`)."
             + (f" **Not run: {kd_reason}.**" if kd_reason else ""), ""]
    if skipped:
        lines += ["Fields left out: " + "; ".join(f"`{k}`: {v}" for k, v in skipped.items()),
                  ""]
    # summary at NFE 10 and 20
    lines += ["## Best of ours vs best of k-diffusion", "",
              "`+gits`: on a GITS grid (`unified_ode/solvers/gits.py`) fitted with iPNDM's "
              "first step on other prior draws of the same exact field (128; `--quick`: 48; "
              "its fitting time is in the solver's time column). `+opt`: on the solver's own "
              "grid from `refine_grid` (coordinate descent from the GITS and the default grid "
              "on the solver's final-sample error against the GITS teacher's, same fitting "
              "draws; its fitting time is in the time column too). "
              "Target (issue 12): ratio ≤ 0.5 "
              "at NFE 5 and 10, "
              "≤ 0.7 at NFE 20.", "",
              "| data | field | NFE | ours (best) | k-diffusion (best) | ratio | target met |",
              "|---|---|---|---|---|---|---|"]
    for c in cases:
        for target in (5, 10, 20):
            if target not in targets:
                continue
            o, p = best(c, "ours", target), best(c, "peer", target)
            if p is None or p.err == 0:
                ratio, verdict = "–", "–"
            else:
                r = o.err / p.err
                ratio = f"{r:.2f}"
                miss = r / TARGET_RATIO[target]
                verdict = "yes" if miss <= 1 else f"**no** ({miss:.1f}× the target)"
            lines.append(f"| {c.data} | {c.field} | {target} | {o.solver} {fmt_err(o)} | "
                         + (f"{p.solver} {fmt_err(p)}" if p else c.note or "–")
                         + f" | {ratio} | {verdict} |")
    lines += [""]
    # detailed tables
    lines += ["## RMS error by solver and NFE budget", ""]
    for c in cases:
        lines += [f"### {c.field} — {c.data}", "",
                  f"Reference NFE {c.ref_nfe} ({c.ref_seconds:.1f} s)."
                  + (f" {c.note}." if c.note else ""), "",
                  "| solver | " + " | ".join(f"NFE {t}" for t in targets) + " | time (s, all) |",
                  "|---|" + "---|" * (len(targets) + 1)]
        names = list(dict.fromkeys(r.solver for r in c.runs if r.kind != "adaptive"))
        for name in names:
            row = [next((r for r in c.runs if r.solver == name and r.target == t), None)
                   for t in targets]
            secs = sum(r.seconds for r in c.runs if r.solver == name)
            lines.append(f"| {name} | " + " | ".join(fmt_err(r) for r in row)
                         + f" | {secs:.2f} |")
        ad = [r for r in c.runs if r.kind == "adaptive"]
        if ad:
            lines.append("| dopri5 (tol: NFE → error) | "
                         + "; ".join(f"{r.tol:g}: {r.nfe} → {r.err:.1e}" for r in ad)
                         + " |" * len(targets) + f" {sum(r.seconds for r in ad):.2f} |")
        lines.append("")
    return "\n".join(lines)


def plot(cases: list[Case], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields = list(dict.fromkeys(c.field for c in cases))
    data = list(dict.fromkeys(c.data for c in cases))
    fig, axes = plt.subplots(len(data), len(fields), figsize=(3.2 * len(fields), 3.0 * len(data)),
                             squeeze=False, sharex=True)
    styles = {"ours": "-", "peer": "--", "adaptive": ":"}
    for c in cases:
        ax = axes[data.index(c.data)][fields.index(c.field)]
        for name in dict.fromkeys(r.solver for r in c.runs):
            runs = sorted((r for r in c.runs if r.solver == name), key=lambda r: r.nfe)
            kind = runs[0].kind
            ax.loglog([r.nfe for r in runs], [max(r.err, 1e-12) for r in runs],
                      styles[kind], marker="o" if kind == "adaptive" else ".", label=name, lw=1.2)
        ax.set_title(f"{c.field} — {c.data.split(' ')[0]}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xlabel("NFE")
        ax.set_ylabel("RMS error vs reference")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 10), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "solver_benchmark"),
                        help="output prefix: writes <out>.md and <out>.png")
    parser.add_argument("--fields", nargs="*", default=None, help="subset of conf/physics names")
    parser.add_argument("--quick", action="store_true",
                        help="small run for development (fewer samples and NFE values)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    targets = (5, 10, 20) if args.quick else NFE_TARGETS
    n_query = {"toy": 100, "digits": 50} if args.quick else {"toy": 500, "digits": 200}
    gits_fit = (48, 32) if args.quick else (128, 64)
    fields, skipped = affine_fields(args.fields)
    kd, kd_reason = load_k_diffusion()
    sets = datasets(args.quick)
    command = "python bench/solvers.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    cases = []
    out = Path(args.out)
    cache = out.parent / f"{out.name}_cases"  # one JSON per finished case: a rerun reuses it
    cache.mkdir(parents=True, exist_ok=True)
    for dname, data in sets.items():
        nq = n_query["toy"] if data.shape[1] == 2 else n_query["digits"]
        for fname, fld in fields.items():
            print(f"{fname} — {dname}", flush=True)
            key = cache / f"{fname}-{dname.split(' ')[0]}-{'quick' if args.quick else 'full'}.json"
            if key.exists():
                d = json.loads(key.read_text())
                cases.append(Case(**{**d, "runs": [Run(**r) for r in d["runs"]]}))
                print(f"  reused {key}", flush=True)
                continue
            t0 = time.perf_counter()
            case = run_case(fname, fld, dname, data, nq, kd, targets, gits_fit=gits_fit)
            case.seconds = time.perf_counter() - t0
            key.write_text(json.dumps(asdict(case)))
            cases.append(case)
    seconds = sum(c.seconds for c in cases)
    md = report(cases, targets, command, skipped, kd_reason, n_query, seconds)
    plot(cases, out.with_suffix(".png"))
    md += f"\n![error vs NFE]({out.with_suffix('.png').name})\n"
    out.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.png')} "
          f"in {seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
