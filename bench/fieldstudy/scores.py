"""Scoring a final run, and each data set's references and floors.

Per toy data set (:class:`References`): fresh draws of the true law — ``val`` (tuning bits/dim),
``test`` (final bits/dim), ``reference`` (``n`` points every sample set is compared with) and
``floor_draw`` (``n`` more points): the floor of each sample metric is its value for
``floor_draw`` against ``reference`` (:func:`unified_ode.metrics.data_floor`), i.e. what a
perfect model would score at this ``n``.

On digits (:class:`DigitsReferences`) there are no fresh draws: ``val``/``test`` are the two
parts of the held-out split, dequantised (uniform noise of one grey level, so the continuous
density is scored on a set of positive volume); the reference and the floor draw are two
disjoint seeded halves of all 1,797 images, compared in a feature space (FID/KID and
precision/recall; the FID Inception network by default).

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

from .presets import DIGITS, Preset
from .runs import FLOOR_SEED, REF_SEED, TEST_SEED, VAL_SEED, heldout_bits, log, write_json

SAMPLE_SEED = 1234


def references(dataset: str, preset: Preset):
    """The references of ``dataset``: :class:`DigitsReferences` or :class:`References`."""
    return DigitsReferences(preset) if dataset == DIGITS else References(dataset, preset)


class References:
    """The fresh draws of one toy data set and the metric objects bound to ``reference``."""

    kind = "points"
    #: the sample metric of the verdict
    primary = "sw"

    def __init__(self, dataset: str, preset: Preset):
        self.dataset = dataset
        self.n = int(preset.n)
        self.val = toy_samples(dataset, preset.tune_nll_n, VAL_SEED)
        self.test = toy_samples(dataset, preset.nll_n, TEST_SEED)
        self.reference = toy_samples(dataset, preset.n, REF_SEED)
        self.floor_draw = toy_samples(dataset, preset.n, FLOOR_SEED)
        self.n_heavy = int(preset.n_heavy or preset.n)
        self.mmd = RBFMMD(self.reference, max_points=self.n_heavy)
        self.pr = PrecisionRecall(self.reference[:self.n_heavy], k=3)
        #: data points of the diagnostics (loss by noise level)
        self.diag_points = self.reference

    def current(self, cell: dict) -> bool:
        """Whether a cached cell was scored as this preset asks (the same ``n_heavy``)."""
        return cell.get("n_heavy") == self.n_heavy

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


class DigitsReferences:
    """The digits leg's held-out images, reference and floor features (module docstring).

    Sample metrics: FID and KID (torchmetrics, from features) and improved precision/recall
    (``k = 3``) in the extractor's feature space, every sample set against the reference half.
    """

    kind = "images"
    primary = "fid"
    #: grey levels are v/8 − 1 for v = 0..16
    LEVEL = 1.0 / 8.0

    def __init__(self, preset: Preset):
        from unified_ode.data.images import DigitsDataModule
        from unified_ode.metrics.features import build_extractor
        from unified_ode.metrics.images import cached_reference_features

        leg = preset.image
        self.dataset, self.n, self.leg = DIGITS, int(leg.n), leg
        self.n_heavy = self.n
        dm = DigitsDataModule()          # conf/dataset/digits.yaml's split (10 %, seed 0)
        held = dm.heldout()
        if not 0 < leg.n_val < len(held):
            raise SystemExit(f"image leg n_val={leg.n_val} must leave held-out images for "
                             f"the test set (the split has {len(held)})")
        g = torch.Generator().manual_seed(VAL_SEED)
        deq = held + (torch.rand(held.shape, generator=g) - 0.5) * self.LEVEL
        self.val, self.test = deq[:leg.n_val], deq[leg.n_val:]
        self.diag_points = held
        everything = torch.cat([dm.train_tensor(), held])
        order = torch.randperm(len(everything), generator=torch.Generator().manual_seed(REF_SEED))
        half = len(everything) // 2
        a, b = everything[order[:half]], everything[order[half:]]
        if leg.ref_n is not None:
            a, b = a[:leg.ref_n], b[:leg.ref_n]
        self.extractor = build_extractor(leg.extractor, in_channels=1)
        self.reference = cached_reference_features(self.extractor, a, dataset="digits",
                                                   split=f"half-a{REF_SEED}")
        self.floor_draw = cached_reference_features(self.extractor, b, dataset="digits",
                                                    split=f"half-b{REF_SEED}")
        self.pr = PrecisionRecall(self.reference, k=3)

    @staticmethod
    def current(cell: dict) -> bool:
        """Cached image cells are always current (FID/KID/P&R use every generated image)."""
        return "fid" in cell

    def feature_metrics(self, features: torch.Tensor) -> dict:
        """``{"fid", "kid", "precision", "recall"}`` of ``features`` ``(N, F)``."""
        from unified_ode.metrics.conditional import image_scores

        k = min(self.leg.kid_subset_size, len(features), len(self.reference))
        scores = image_scores(self.extractor, self.reference, features, kid_subset_size=k,
                              sync=False)
        return {"fid": float(scores["fid"]), "kid": float(scores["kid"]), **self.pr(features)}

    def sample_metrics(self, samples: torch.Tensor) -> dict:
        """The metrics of generated images ``(N, 1, 8, 8)`` in ``[-1, 1]``."""
        from unified_ode.metrics.images import extract_features

        return self.feature_metrics(extract_features(self.extractor, samples.float(),
                                                     batch_size=64))

    def floors(self) -> dict:
        """Each metric for the other half of the digits against the reference half."""
        return {**self.feature_metrics(self.floor_draw), "n": len(self.reference),
                "n_heavy": self.n_heavy,
                "n_test": len(self.test),
                "n_floor": len(self.floor_draw), "extractor": self.extractor.name}


def draw(run, n: int, solver: str, steps: int) -> tuple[torch.Tensor, int, int]:
    """``n`` samples of ``run`` from the fixed prior noise (seed ``SAMPLE_SEED``, one batch):
    ``(finite samples float64, NFE, number of non-finite samples left out)``."""
    res = run.sample(n, solver=solver, steps=steps, seed=SAMPLE_SEED, batch_size=n,
                     progress=False)
    x = res.x.double()
    finite = torch.isfinite(x.flatten(1)).all(dim=1)
    return x[finite], int(res.nfe), int((~finite).sum())


def score_run(run_dir: Path, refs, preset: Preset) -> dict:
    """Scores of one final run (cached in ``<run>/scores.json``; cached sample cells scored
    otherwise than the preset asks, e.g. MMD on fewer points, are scored again, the cached
    bits/dim kept)."""
    path = run_dir / "scores.json"
    cached = json.loads(path.read_text()) if path.is_file() else None
    labels = [c[0] for c in preset.cells]
    if cached and all(k in cached["cells"] and refs.current(cached["cells"][k])
                      for k in labels):
        return cached
    from unified_ode.api import load_run

    cpu = time.process_time()
    out = {"bits": cached["bits"] if cached else heldout_bits(run_dir, refs.test), "cells": {}}
    run = load_run(run_dir)
    for label, solver, steps in preset.cells:
        x, nfe, nonfinite = draw(run, refs.n, solver, steps)
        cell = {"solver": solver, "steps": steps, "nfe": nfe, "nonfinite": nonfinite,
                "n_heavy": refs.n_heavy}
        cell.update(refs.sample_metrics(x))
        out["cells"][label] = cell
    out["cpu_seconds"] = time.process_time() - cpu + (cached or {}).get("cpu_seconds", 0.0)
    write_json(path, out)
    c = out["cells"]
    log(f"  scored {run_dir}: bits/dim {out['bits']['mean']:.4f}, "
        + ", ".join(f"{k}: {refs.primary} {v[refs.primary]:.4f} P {v['precision']:.3f} "
                    f"R {v['recall']:.3f}"
                    for k, v in c.items()) + f" ({out['cpu_seconds']:.0f} s CPU)")
    return out
