"""The paper's claim, tested fairly (issue 17): can a field built with the unified method beat
VE and PFGM++ (D = 128) at equal tuning budget?

    python bench/new_fields.py --jobs 2        # --preset medium -> docs/new_fields.md, 2 processes
    python bench/new_fields.py --datasets moons   # one data set
    python bench/new_fields.py --preset small  # a quicker, weaker study
    python bench/new_fields.py --full          # a larger budget (not run here)
    python bench/new_fields.py --smoke         # seconds: a pipeline check -> outputs/...
    python bench/new_fields.py --report-only   # rewrite the page from finished runs

For each data set (the toy sets checkerboard, eight_gaussians, moons, and 8×8 digits) and each
field (ve, pfgmpp_D128, poisson, radial, exppower):

1. **tune** — Optuna (the sampler of conf/hparams_search/optuna.yaml: TPE, seed 0) with the
   same budget for every field (``trials`` trials of ``trial_steps`` steps, training seed 0)
   over its own knobs: learning rate, EMA half-life, ``p_mean``, ``p_std``, ``t_max`` and its
   field parameters (radial: the profile; exppower: the tail index β); objective: held-out
   bits/dim (fresh validation points; on digits dequantised held-out images);
2. **retrain** the best setting with every seed (``final_steps`` steps);
3. **score** each seed: bits/dim on test points; at NFE ≤ 10 (dpmpp2m, 10 steps) and
   NFE ≤ 35 (heun, 18 steps): on toys ``n`` samples scored by sliced W2, MMD² and
   precision/recall against ``n`` fresh reference points, on digits 1,000 images by FID, KID
   and precision/recall in Inception space against half of the digits — each metric beside
   its data-vs-data floor at the same n;
4. **diagnose** (first seed): loss by noise level (model vs exact denoiser), posterior-weight
   entropy over σ, KL(p_tmax || prior);
5. **slice** the exppower family along β at its tuned setting (every β × every seed);
6. **report** — the page, its figures and ``<stem>.json``, rewritten after each data set.

Runs are ``train.py`` runs (``<root>/tune/<data>/<field>/trial<k>``,
``<root>/final/<data>/<field>/seed<k>``, ``<root>/sweep/<data>/beta<β>/seed<k>``); a rerun
reuses finished trials, runs and scores and never overwrites a run trained with other
settings. Presets: bench/fieldstudy/presets.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fieldstudy.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
