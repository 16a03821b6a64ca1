"""Distillation benchmark: one- and few-step students of every field against their teachers.

    python bench/distill.py                      # the preset: toy2d x {poisson, pfgmpp, ve, linear}
    python bench/distill.py --datasets digits --fields ve   # digits (FID with Inception)
    python bench/distill.py --report-only        # rewrite docs/distillation.md from results
    # digits with a trained teacher (read only), a consistency student, 3 FIDs:
    python bench/distill.py --datasets digits --fields ve --teacher <run dir> \
        --methods consistency --low-nfe 2 --teacher-solvers dpmpp2m --fid-n 1000

For each data set and field: a teacher run (``train.py`` config, trained once and reused: its run
directory is kept under ``--out``), a ``distill=reflow`` student and a ``distill=consistency``
student of it (both initialised from the teacher's weights). Every model is sampled from the same
prior draws: the teacher at NFE 35 (Heun, 18 steps) and at NFE 1, 2, 4 (the better of Euler and
DPM-Solver++(2M) at each budget), the reflow student with Euler at 1, 2, 4 steps, the consistency
student with ``solver=consistency`` at 1, 2, 4 steps. Metric: sliced Wasserstein distance to 2000
held-out points (toy2d, ``sw@2k``) or FID against the training images with the Inception
extractor (digits; ``--fid-n`` samples; the reference features are those the training runs'
metrics cache). ``--teacher`` uses an existing ``train.py`` run (read only) as the teacher of
one data set and field instead of training one; its students get its own overrides.

The evaluations and commands also go to ``<docs>/distillation_results.json``, which
``--merge`` reads back (with any other results files), so a later run adds rows to the page
without rerunning the earlier ones.

Resumable: every stage (teacher, pairs, student, each evaluation) is skipped when its output
exists (``<out>/results.json`` holds the evaluations and the wall time of each stage), so an
interrupted run continues where it stopped. Timings under a shared machine's load are inflated.

The benchmark itself is the package ``bench/distillation`` (presets, runs, scoring, report,
figures, cli).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.distillation.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
