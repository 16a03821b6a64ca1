"""Scoring samples: sw@2k against held-out points (toy2d) or FID (digits), every model sampled
from the same prior draws with each solver of its kind; the best score per budget is kept.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .presets import TEACHER_SOLVERS


class Scorer:
    """sw@2k against held-out points (toy2d) or FID against training images (digits)."""

    def __init__(self, datamodule, kind: str, fid_n: int):
        self.kind = kind
        if kind == "toy":
            from unified_ode.metrics.points import sliced_wasserstein

            self.reference = datamodule.heldout(2000)
            self.fn = lambda x: sliced_wasserstein(x.float(), self.reference.float())
            self.n, self.name = 2000, "sw@2k"
        else:  # FID against fid_n training images, the reference the metrics callback caches
            from unified_ode.metrics.scoring import SampleScorer

            scorer = SampleScorer(n_samples=fid_n, inception_score=False,
                                  kid_subset_size=min(1000, fid_n))
            scorer.prepare(datamodule)
            self.name = scorer.primary("images")
            self.n = fid_n
            self.fn = lambda x: float(scorer.score_samples(x)[self.name])

    def __call__(self, x) -> float:
        return float(self.fn(x))


def solvers_for(what: str, nfe: int, teacher_solvers=TEACHER_SOLVERS):
    from unified_ode.solvers import ConsistencySampler, DPMSolverPP2M, Euler, Heun

    if what == "teacher35":
        return [("heun", Heun(steps=18))]
    if what == "teacher":
        made = {"euler": lambda: Euler(steps=nfe), "dpmpp2m": lambda: DPMSolverPP2M(steps=nfe)}
        return [(name, made[name]()) for name in teacher_solvers]
    if what == "reflow":
        return [("euler", Euler(steps=nfe))]
    return [("consistency", ConsistencySampler(steps=nfe, seed=0))]


def evaluate(results, key, module, scorer, prior, what, nfe, samples_dir: Path, log,
             teacher_solvers=TEACHER_SOLVERS):
    if key in results["evals"]:
        return results["evals"][key]
    best = None
    for name, solver in solvers_for(what, nfe, teacher_solvers):
        start = time.perf_counter()
        chunks = []
        with torch.no_grad():
            for lo in range(0, prior.shape[0], 500):
                r = module.sample(x_T=prior[lo:lo + 500], solver=solver)
                chunks.append(r.x)
        x = torch.cat(chunks)
        seconds = time.perf_counter() - start
        score = scorer(x) if torch.isfinite(x).all() else float("inf")
        if best is None or score < best["score"]:
            best = {"score": score, "solver": name, "nfe": r.nfe, "seconds": seconds}
            torch.save(x[:2000].cpu(), samples_dir / f"{key.replace('/', '_')}.pt")
    results["evals"][key] = best
    log(f"  {key}: {scorer.name} = {best['score']:.4g} ({best['solver']}, NFE {best['nfe']})")
    return best
