"""``sample.py task=likelihood``: bits per dimension of held-out data under the ODE.

Settings are ``cfg.likelihood`` (``conf/sample.yaml``); the computation is
:func:`unified_ode.solvers.likelihood.log_likelihood`. Conventions, also written into
``likelihood.json``:

* points (``dataset.kind == "points"``): continuous data, ``bits/dim = −log p / (d ln 2)``
  (may be negative);
* images (8-bit, stored as ``x = k/127.5 − 1``): with ``dequantize`` each pixel gets uniform
  noise over its bin, ``x + (u − 1/2)/127.5``, and ``bits/dim = −log p/(d ln 2) + log2(127.5)``,
  an upper bound on the bits/dim of the discretised model (Song et al. 2021, PFGM).

The density is that of the data at the field's ``t_min`` (``likelihood.t_min``), where the ODE
starts; the prior is the field's at ``t_max``.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from unified_ode.errors import UserError
from unified_ode.solvers.likelihood import DIVERGENCES, log_likelihood

RESULT_FILE = "likelihood.json"
#: Bin width of 8-bit images in [-1, 1] (x = k/127.5 − 1).
IMAGE_BIN_WIDTH = 1.0 / 127.5

def _settings(cfg: DictConfig) -> dict:
    """The ``likelihood:`` section of the sample config (conf/sample.yaml holds every key and
    its default: the one place they live), checked."""
    if cfg.get("likelihood") is None:
        raise UserError("task=likelihood needs the likelihood: section of conf/sample.yaml "
                        "(compose the sample config, or pass likelihood.<key>=... overrides)")
    s = OmegaConf.to_container(cfg.likelihood, resolve=True)
    if int(s["n"]) < 1 or int(s["batch_size"]) < 1:
        raise UserError(f"likelihood.n and likelihood.batch_size must be positive, got "
                        f"{s['n']} and {s['batch_size']}")
    if s["divergence"] not in DIVERGENCES:
        raise UserError(f"likelihood.divergence={s['divergence']!r}; choose one of "
                        f"{', '.join(DIVERGENCES)}")
    return s


def likelihood_task(cfg: DictConfig, loaded, out_dir: Path) -> dict:
    """Held-out data -> ``likelihood.json`` (summary) and ``likelihood.npz`` (per point)."""
    s = _settings(cfg)
    module, datamodule = loaded.module, loaded.datamodule
    out_dir = Path(out_dir)
    if (out_dir / RESULT_FILE).exists():
        raise UserError(f"{out_dir / RESULT_FILE} already exists; refusing to overwrite it. "
                        "Pass out_dir=<a new directory>.")
    images = getattr(datamodule, "kind", None) == "images"
    data = datamodule.heldout(int(s["n"]))
    n, bs = data.shape[0], int(s["batch_size"])
    g = torch.Generator().manual_seed(int(cfg.seed))
    field = module.field

    log_probs, bpds, nfes = [], [], []
    divergence = s["divergence"]
    start = time.perf_counter()
    bar = tqdm(total=n, desc="likelihood", unit="pt")
    use_ema = getattr(module, "use_ema", None)
    try:
        for lo in range(0, n, bs):
            x = data[lo:lo + bs].to(module.device)
            if images and s["dequantize"]:
                u = torch.rand(x.shape, generator=g, dtype=x.dtype).to(x.device)
                x = x + (u - 0.5) * IMAGE_BIN_WIDTH

            def progress(t: float) -> None:
                bar.set_postfix_str(f"t={t:.3g}", refresh=False)

            ctx = use_ema(True) if use_ema is not None else contextlib.nullcontext()
            with ctx:
                res = log_likelihood(
                    module.drift, field, x, divergence=s["divergence"],
                    probes=int(s["probes"]), exact_max_dim=int(s["exact_max_dim"]),
                    t_start=s["t_min"], t_end=s["t_max"], rtol=float(s["rtol"]),
                    atol=float(s["atol"]), time_variable=s["time_variable"], generator=g,
                    progress=progress)
            divergence = res.divergence
            log_probs.append(res.log_prob.detach().cpu())
            bpds.append(res.bits_per_dim(IMAGE_BIN_WIDTH if images else None).detach().cpu())
            nfes.append(res.nfe)
            bar.update(x.shape[0])
            bar.set_postfix(bpd=f"{torch.cat(bpds).mean():.4f}", nfe=res.nfe)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    log_prob, bpd = torch.cat(log_probs).double(), torch.cat(bpds).double()
    mean = float(bpd.mean())
    stderr = float(bpd.std() / math.sqrt(n)) if n > 1 else float("nan")
    dims = int(math.prod(data.shape[1:]))
    convention = ("8-bit images in [-1, 1]: uniform dequantisation within each bin, "
                  "bits/dim = -log p/(d ln 2) + log2(127.5)" if images and s["dequantize"] else
                  "8-bit images in [-1, 1], not dequantised: bits/dim = -log p/(d ln 2) + "
                  "log2(127.5)" if images else
                  "continuous data: bits/dim = -log p/(d ln 2)")
    info = {"bits_per_dim": mean, "bits_per_dim_stderr": stderr,
            "nats_per_dim": float(-log_prob.mean() / dims), "n": n, "dims": dims,
            "nfe_per_batch": nfes, "divergence": divergence, "settings": s,
            "t_start": res.t_start, "t_end": res.t_end, "convention": convention,
            "density_of": f"data at t = {res.t_start:g} (the ODE's start)",
            "wall_seconds": seconds, "run": cfg.run,
            "checkpoint": str(loaded.checkpoint) if loaded.checkpoint else None,
            "field": field.describe()}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RESULT_FILE).write_text(json.dumps(info, indent=2))
    np.savez(out_dir / "likelihood.npz", log_prob=log_prob.numpy(), bits_per_dim=bpd.numpy(),
             nfe=np.array(nfes))
    nfe_text = str(nfes[0]) if len(set(nfes)) == 1 else f"{nfes} (per batch)"
    print(f"bits/dim: {mean:.4f} ± {stderr:.4f} (n={n}, d={dims}, divergence={divergence})")
    print(f"NFE: {nfe_text}")
    print(f"wall time: {seconds:.3f} s; wrote {out_dir / RESULT_FILE}")
    return {"out_dir": str(out_dir), "bits_per_dim": mean, "nfe": nfes, "seconds": seconds}

