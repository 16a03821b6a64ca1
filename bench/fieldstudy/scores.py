"""Scoring a final run, and each data set's references and floors.

Per data set (:class:`References`): fresh draws of the true law — ``val`` (tuning bits/dim),
``test`` (final bits/dim), ``reference`` (``n`` points every sample set is compared with) and
``floor_draw`` (``n`` more points): the floor of each sample metric is its value for
``floor_draw`` against ``reference`` (:func:`unified_ode.metrics.data_floor`), i.e. what a
perfect model would score at this ``n``.

Per run (:func:`score_run`, cached in ``<run>/scores.json``): held-out bits/dim on ``test``;
then for each sampling setting of the preset (``cells``: NFE ≤ 10 and ≤ 35), ``n`` samples from
fixed prior noise (seed 1234, one batch) scored by sliced W2 (``sw``, all ``n`` points), MMD²
(``mmd``) and improved precision/recall (``k = 3``) on the first ``n_heavy`` points.
Non-finite samples are counted and left out.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from unified_ode.data.toy2d import toy_samples
from unified_ode.metrics import data_floor, sliced_wasserstein
from unified_ode.metrics.manifold import PrecisionRecall
from unified_ode.metrics.points import RBFMMD

from .presets import Preset
from .runs import FLOOR_SEED, REF_SEED, TEST_SEED, VAL_SEED, heldout_bits, log

SAMPLE_SEED = 1234


class References:
    """The fresh draws of one toy data set and the metric objects bound to ``reference``."""

    def __init__(self, dataset: str, preset: Preset):
        self.dataset = dataset
        self.val = toy_samples(dataset, preset.tune_nll_n, VAL_SEED)
        self.test = toy_samples(dataset, preset.nll_n, TEST_SEED)
        self.reference = toy_samples(dataset, preset.n, REF_SEED)
        self.floor_draw = toy_samples(dataset, preset.n, FLOOR_SEED)
        self.n_heavy = int(preset.n_heavy or preset.n)
        self.mmd = RBFMMD(self.reference, max_points=self.n_heavy)
        self.pr = PrecisionRecall(self.reference[:self.n_heavy], k=3)

    def sample_metrics(self, samples: torch.Tensor) -> dict:
        """``{"sw", "mmd", "precision", "recall"}`` of ``samples`` against the reference (MMD
        and precision/recall: the first ``n_heavy`` points of each)."""
        return {"sw": sliced_wasserstein(samples, self.reference), "mmd": self.mmd(samples),
                **self.pr(samples[:self.n_heavy])}

    def floors(self) -> dict:
        """Each sample metric for ``floor_draw`` against ``reference`` (same ``n``)."""
        out = data_floor({"sw": sliced_wasserstein, "mmd": lambda a, _: self.mmd(a),
                          "pr": lambda a, _: self.pr(a[:self.n_heavy])}, self.floor_draw,
                         self.reference)
        return {"sw": out["sw"], "mmd": out["mmd"], "precision": out["pr/precision"],
                "recall": out["pr/recall"], "n": len(self.reference), "n_heavy": self.n_heavy}


def score_run(run_dir: Path, refs: References, preset: Preset) -> dict:
    """Scores of one final run (cached in ``<run>/scores.json``)."""
    path = run_dir / "scores.json"
    if path.is_file():
        return json.loads(path.read_text())
    from unified_ode.api import load_run

    cpu = time.process_time()
    out = {"bits": heldout_bits(run_dir, refs.test), "cells": {}}
    run = load_run(run_dir)
    for label, solver, steps in preset.cells:
        res = run.sample(preset.n, solver=solver, steps=steps, seed=SAMPLE_SEED,
                         batch_size=preset.n, progress=False)
        x = res.x.double()
        finite = torch.isfinite(x).all(dim=1)
        cell = {"solver": solver, "steps": steps, "nfe": int(res.nfe),
                "nonfinite": int((~finite).sum())}
        cell.update(refs.sample_metrics(x[finite]))
        out["cells"][label] = cell
    out["cpu_seconds"] = time.process_time() - cpu
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2))
    tmp.replace(path)
    c = out["cells"]
    log(f"  scored {run_dir}: bits/dim {out['bits']['mean']:.4f}, "
        + ", ".join(f"{k}: sw {v['sw']:.4f} P {v['precision']:.3f} R {v['recall']:.3f}"
                    for k, v in c.items()) + f" ({out['cpu_seconds']:.0f} s CPU)")
    return out
