"""The fair field comparison of issue 17 (``python bench/new_fields.py``): every field gets
the same Optuna budget over its own knobs, the best setting of each is retrained with several
seeds and scored with metrics that report their floor, and per-field diagnostics say where
learning is hard. Modules: presets (fields, search spaces, presets), runs (training, tuning),
scores (metrics and floors), diagnostics, report (markdown + figures), cli."""
