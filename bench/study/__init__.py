"""The case study: every field trained on equal terms, sampled at each NFE budget, one report.

    python bench/case_study.py                      # the study of conf/case_study.yaml
    python bench/case_study.py --smoke --out /tmp/case_smoke/results.md   # ~2 min
    python bench/case_study.py dataset=cifar10 network=ddpmpp trainer=ddp   # paper scale
    python bench/case_study.py --report-only        # rewrite the report from finished work

A thin driver over the project's own commands:

1. **train** — for each (data set, field, seed) ``train.py`` runs as a subprocess with the data
   set's overrides (its network included: the same for every field), the field's overrides,
   ``train_overrides``, the budget ``trainer.max_steps`` and ``seed``, then every
   ``key=value`` of this command line (passed through), in its own directory
   ``<root>/runs/<data set>/<field>/seed<k>``. A finished run (marker
   ``case_study_train.json``, recording its overrides) is reused, an interrupted one
   (``last.ckpt``, no marker) is continued with ``resume=true`` when app/train.py's resume
   guard accepts it, and a run directory trained with other settings is refused before
   anything starts, never overwritten: the study resumes where it stopped.
2. **evaluate** — each run is loaded as ``sample.py`` loads it (``load_model``) with its EMA
   weights and scored by :class:`SampleScorer` exactly as
   ``sample.py task=evaluate`` does (``sw@n``/``mmd@n`` for points against held-out data,
   ``fid@n``/``kid@n``/``is@n`` for images with the Inception weights), for every solver at
   every NFE budget (the most steps whose NFE fits) and with the adaptive solver; bits/dim
   come from ``sample.py task=likelihood``'s function on the same EMA weights. A solver that
   needs a denoiser form (``dpmpp2m``, ``dpmpp3m``, ``exppc``) on a non-affine field
   (``radial_general``) is reported ``n/a``. Every score is cached as JSON under
   ``<run>/case_study/`` and reused.
3. **probes** (points data sets by default) — metric vs the Euler step count, and metric vs
   Gaussian noise added to the network's prediction: the module's model is wrapped so that
   each call returns ``p + eps · rms(p) · z`` with ``rms(p)`` the root mean square of the
   prediction over each sample's coordinates and ``z ~ N(0, I)`` (seeded), i.e. noise of
   relative size ``eps`` on whatever the network predicts (the denoiser for denoiser-objective
   fields, the velocity for velocity-objective ones). The same wrapped model serves the drift
   and the denoiser-form solvers.
4. **report** — ``--out`` (default ``docs/results.md`` for the configured study,
   ``<root>/results.md`` for ``--smoke`` or a data set from the command line): per data set
   the field × NFE table of the best solver's metric (mean ± std over seeds), bits/dim, one
   table per solver, the other metrics at each field's best setting, the probes, plots of
   metric vs NFE (one panel per data set; per solver; per data set one panel per solver: see
   plots.py), the trajectories of each field (points) or a grid of samples per field (images),
   the budget, seeds, hardware and wall time; ``results.json`` beside it holds every number.
   The findings (which field is best at NFE ≤ 10 and which reaches the best quality) are
   computed from the table and printed.

``--jobs N`` (default: the config's ``jobs``) shares the runs among N worker processes (a
``concurrent.futures.ProcessPoolExecutor``; each run is handed to exactly one worker, which
trains and scores it with ``OMP_NUM_THREADS = cores // N``); then the framework overhead
(``bench/overhead.py``) is measured on the idle machine and the report written.
``<root>/invocations.json`` keeps every invocation's wall time. ``--figures-from
docs/results.json`` redraws a saved report's figures from its numbers.

Modules (bench/study/): plan (settings, runs, sampling cells, file layout), train (train.py
subprocesses and the run-directory guard), score (in-process scoring, bits/dim, figure
samples), probes (the robustness probes), pool (worker processes), results (gathering and
ranking), report (markdown + json), plots (figures), overhead, cli (the command line).

Lower is better for every ranking metric (sw, mmd, fid, kid); the IS is reported, not ranked.
"""
