"""``sample.py task=evaluate``: score a trained run (or the exact field) by its samples.

``python sample.py task=evaluate run=<run dir> n=2000 [solver=...] [+metrics.extractor=...]``

Generates ``n`` samples from fixed noise (seed ``seed``, batches of ``batch_size``) with the
run's EMA weights when its checkpoint has them (``ema=false``: the raw weights), scores them
exactly as the training-time metrics callback does (:class:`SampleScorer`: ``sw@n``/``mmd@n``
for points, ``fid@n``/``kid@n``/``is@n`` for images) and writes ``metrics.json`` and
``samples.npz`` into the output directory. Options of the scorer go under ``metrics.``
(``+metrics.inception_path=...``, ``+metrics.extractor=random``, ``+metrics.cache_dir=...``,
``+metrics.reference_split=heldout``, ...).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from unified_ode.errors import UserError
from unified_ode.metrics.scoring import SampleScorer

#: the options a ``metrics:`` section may give: SampleScorer's own keyword arguments (its
#: signature is the one place they and their defaults live), less those sample.py sets itself
SCORER_KEYS = tuple(k for k in inspect.signature(SampleScorer).parameters
                    if k not in ("n_samples", "batch_size", "seed"))


def evaluate_task(cfg: DictConfig, loaded, out_dir: Path) -> dict:
    module, datamodule, mcfg = loaded.module, loaded.datamodule, loaded.config
    section = cfg.get("metrics")
    options = OmegaConf.to_container(section, resolve=True) if section else {}
    unknown = sorted(set(options) - set(SCORER_KEYS))
    if unknown:
        raise UserError(f"unknown metrics option(s) {', '.join(unknown)}; known: "
                        f"{', '.join(SCORER_KEYS)}")
    scorer = SampleScorer(n_samples=int(cfg.n), batch_size=int(cfg.batch_size),
                          seed=int(cfg.seed), **options)
    scorer.prepare(datamodule, device=module.device)
    solver = instantiate(mcfg.solver)
    metrics, samples = scorer.score(module, solver)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out_dir / "samples.npz", samples=samples.numpy(), nfe=np.array([metrics["nfe"]]),
             seed=int(cfg.seed))
    info = {"metrics": metrics, "primary": scorer.primary(scorer.kind), "ema": loaded.ema,
            "checkpoint": str(loaded.checkpoint) if loaded.checkpoint else None,
            "run": cfg.run, "solver": solver.describe(), "n": int(cfg.n), "seed": int(cfg.seed)}
    (out_dir / "metrics.json").write_text(json.dumps(info, indent=2))
    for name, value in metrics.items():
        print(f"{name}: {value:.6g}")
    print(f"weights: {'EMA' if loaded.ema else 'raw'}; wrote {out_dir / 'metrics.json'}")
    return {"out_dir": str(out_dir), **info}
