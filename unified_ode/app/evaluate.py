"""``sample.py task=evaluate``: score a trained run (or the exact field) by its samples.

``python sample.py task=evaluate run=<run dir> n=2000 [solver=...] [+metrics.extractor=...]``

Generates ``n`` samples from fixed noise (seed ``seed``, batches of ``batch_size``) with the
run's EMA weights when its checkpoint has them (``ema=false``: the raw weights), scores them
exactly as the training-time metrics callback does (:class:`SampleScorer`: ``sw@n``/``mmd@n``
for points, ``fid@n``/``kid@n``/``is@n`` for images) and writes ``metrics.json`` and
``samples.npz`` into the output directory. Options of the scorer go under ``metrics.``
(``+metrics.inception_path=...``, ``+metrics.extractor=random``, ``+metrics.cache_dir=...``,
``+metrics.reference_split=heldout``, ...).

A class-conditional run (``dataset.conditional=true``) is scored on class-balanced samples
(sample ``i`` of class ``i mod num_classes``, guided with ``guidance=<w>`` and
``guidance_interval`` when given): ``metrics.json`` then also holds the per-class scores
(``fid_class/<c>@n``, ``kid_class/<c>@n`` or ``sw_class/<c>@n``) and ``label_accuracy@n``
among ``metrics``, the same regrouped as a ``per_class`` table (class -> metric -> value),
and ``samples.npz`` the ``labels``. Turn the classifier off with
``+metrics.label_accuracy=false``, the per-class scores with ``+metrics.per_class=false``.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from unified_ode.errors import UserError
from unified_ode.guidance import check_request
from unified_ode.metrics.conditional import balanced_labels
from unified_ode.metrics.scoring import SampleScorer

#: the options a ``metrics:`` section may give: SampleScorer's own keyword arguments (its
#: signature is the one place they and their defaults live), less those sample.py sets itself
SCORER_KEYS = tuple(k for k in inspect.signature(SampleScorer).parameters
                    if k not in ("n_samples", "batch_size", "seed", "guidance",
                                 "guidance_interval"))


def class_table(metrics: dict) -> dict:
    """``{"3": {"fid": ..., "kid": ...}, ...}`` from the flat ``<name>_class/<c>@<n>``
    entries of ``metrics`` (classes in numeric order)."""
    table: dict = {}
    for key, value in metrics.items():
        name, _, rest = key.partition("_class/")
        if rest:
            table.setdefault(rest.split("@", 1)[0], {})[name] = value
    return dict(sorted(table.items(), key=lambda kv: int(kv[0])))


def evaluate_task(cfg: DictConfig, loaded, out_dir: Path) -> dict:
    module, datamodule, mcfg = loaded.module, loaded.datamodule, loaded.config
    section = cfg.get("metrics")
    options = OmegaConf.to_container(section, resolve=True) if section else {}
    unknown = sorted(set(options) - set(SCORER_KEYS))
    if unknown:
        raise UserError(f"unknown metrics option(s) {', '.join(unknown)}; known: "
                        f"{', '.join(SCORER_KEYS)}")
    if cfg.get("labels") is not None or cfg.get("class") is not None:
        raise UserError("task=evaluate draws n samples balanced over the classes (sample i of "
                        "class i mod num_classes); labels=/class= are options of task=sample. "
                        "Drop them (n=, guidance= and guidance_interval= apply).")
    num_classes = int(datamodule.num_classes) if getattr(datamodule, "conditional", False) \
        else 0
    guidance = float(cfg.get("guidance", 0.0) or 0.0)
    interval = cfg.get("guidance_interval")
    interval = None if interval is None else [float(v) for v in interval]
    if interval is not None and len(interval) != 2:
        raise UserError(f"guidance_interval must be [t_lo, t_hi], got {interval}")
    # the errors of a conditional request (guidance without label dropout, ...) before sampling
    check_request(module.model, balanced_labels(max(num_classes, 1), num_classes)
                  if num_classes else None, guidance, interval)
    scorer = SampleScorer(n_samples=int(cfg.n), batch_size=int(cfg.batch_size),
                          seed=int(cfg.seed), guidance=guidance, guidance_interval=interval,
                          **options)
    scorer.prepare(datamodule, device=module.device)
    solver = instantiate(mcfg.solver)
    metrics, samples = scorer.score(module, solver)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = {"labels": balanced_labels(len(samples), num_classes).numpy()} if num_classes \
        else {}
    np.savez(out_dir / "samples.npz", samples=samples.numpy(), nfe=np.array([metrics["nfe"]]),
             seed=int(cfg.seed), **labels)
    info = {"metrics": metrics, "primary": scorer.primary(scorer.kind), "ema": loaded.ema,
            "checkpoint": str(loaded.checkpoint) if loaded.checkpoint else None,
            "run": cfg.run, "solver": solver.describe(), "n": int(cfg.n), "seed": int(cfg.seed)}
    if num_classes:
        info.update(num_classes=num_classes, guidance=guidance, guidance_interval=interval,
                    per_class=class_table(metrics))
    (out_dir / "metrics.json").write_text(json.dumps(info, indent=2))
    for name, value in metrics.items():
        if "_class/" not in name:
            print(f"{name}: {value:.6g}")
    if num_classes and info["per_class"]:
        cols = sorted({k for row in info["per_class"].values() for k in row})
        print("per class: " + "; ".join(
            f"{c}: " + ", ".join(f"{k} {row[k]:.4g}" for k in cols if k in row)
            for c, row in info["per_class"].items()))
    print(f"weights: {'EMA' if loaded.ema else 'raw'}; wrote {out_dir / 'metrics.json'}")
    return {"out_dir": str(out_dir), **info}
