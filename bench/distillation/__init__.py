"""The distillation benchmark (``python bench/distill.py``; see that file's docstring):
teachers and one- and few-step students of every field, trained, sampled from the same prior
draws and scored. Modules: presets (data sets, fields, overrides), runs (training, loading,
one case), scoring, report (docs/distillation.md, README's table), figures, cli."""
