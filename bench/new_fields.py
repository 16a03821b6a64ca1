"""The paper's claim, tested fairly (issue 17): can a field built with the unified method beat
VE and PFGM++ (D = 128) at equal tuning budget?

    python bench/new_fields.py                 # --preset medium -> docs/new_fields.md
    python bench/new_fields.py --datasets moons   # one data set (run several in parallel)
    python bench/new_fields.py --preset small  # a quicker, weaker study
    python bench/new_fields.py --full          # the 3-hour preset (2 cores)
    python bench/new_fields.py --smoke         # seconds: a pipeline check -> outputs/...
    python bench/new_fields.py --report-only   # rewrite the page from finished runs

For each toy data set (checkerboard, eight_gaussians, moons) and each field (ve, pfgmpp_D128,
poisson, radial, exppower):

1. **tune** — Optuna (TPE, seed 0) with the same budget for every field (``trials`` trials of
   ``trial_steps`` steps, training seed 0) over its own knobs: learning rate, EMA half-life,
   ``p_mean``, ``p_std``, ``t_max`` and its field parameters (radial: the profile; exppower:
   the tail index β); objective: held-out bits/dim on fresh validation points;
2. **retrain** the best setting with every seed (``final_steps`` steps);
3. **score** each seed: bits/dim on fresh test points; at NFE ≤ 10 (dpmpp2m, 10 steps) and
   NFE ≤ 35 (heun, 18 steps) ``n`` samples scored by sliced W2, MMD² and precision/recall
   against ``n`` fresh reference points, with each metric's data-vs-data floor at the same n;
4. **diagnose** (first seed): loss by noise level (model vs exact denoiser), posterior-weight
   entropy over σ, KL(p_tmax || prior);
5. **report** — the page, its figures and ``<stem>.json``, rewritten after each data set.

Runs are ``train.py`` runs (``<root>/tune/<data>/<field>/trial<k>``,
``<root>/final/<data>/<field>/seed<k>``); a rerun reuses finished trials, runs and scores and
never overwrites a run trained with other settings. Presets: bench/fieldstudy/presets.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fieldstudy.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
