"""Per-field diagnostics (issue 17 §3): where is learning hard, and does the prior cover the
data?

* **loss by noise level**: the EDM-weighted denoiser loss ``λ(σ)·||D(x, σ) − y||²/d``
  (``λ = 1/c_out²``, the training loss's weight) of the trained model (EMA weights) on
  held-out ``y`` at a grid of ``σ``, beside the same loss of the exact denoiser of the
  training set (the minimum of the empirical objective): their gap is what the network fails
  to learn at each noise level.
* **posterior-weight entropy**: for ``x ~ p_σ(·|y)`` with ``y`` from a reference set of ``M``
  data points, the entropy of the exact posterior weights ``p(y_j | x)`` over the ``M`` points,
  divided by ``log M``: 0 where the posterior sits on one point (denoising is trivial), 1 where
  the state has forgotten the data (the denoiser is the mean); the transition band is where
  the regression target changes fastest.
* **prior coverage**: ``KL(p_{t_max} || π)`` in nats, by Monte Carlo over ``x ~ p_{t_max}``
  with the exact mixture density over the reference set — the prior's mismatch, a term of
  every likelihood bound (``0`` when the prior is exactly the perturbed data).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from unified_ode.parametrisation import ProbabilityFlow

from .runs import write_json

SIGMA_GRID = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0,
              200.0, 400.0)


def sq_norm(x: torch.Tensor) -> torch.Tensor:
    """``(B,)`` squared norm of each sample of ``x`` ``(B, ...)``."""
    return x.flatten(1).pow(2).sum(1)


@torch.no_grad()
def diagnose(run_dir: Path, heldout: torch.Tensor, n: int, seed: int = 7) -> dict:
    """The three diagnostics of a trained run on ``n`` of the ``heldout`` points (cached in
    ``<run>/diagnostics.json``)."""
    path = run_dir / "diagnostics.json"
    if path.is_file():
        return json.loads(path.read_text())
    from unified_ode.api import load_run

    run = load_run(run_dir)
    module, field = run.module, run.module.field
    train = run.datamodule.train_tensor().double()
    shape = train.shape[1:]
    exact = ProbabilityFlow.exact(field, train)
    g = torch.Generator().manual_seed(seed)
    n = min(n, len(heldout))
    y = heldout[:n].double().reshape(n, *shape)
    ref = train[torch.randperm(len(train), generator=g)[:n]]
    d = y[0].numel()
    out = {"sigma": [], "loss_model": [], "loss_exact": [], "entropy": []}
    for sigma in SIGMA_GRID:
        t = float(field.t_from_sigma(torch.tensor(sigma, dtype=torch.float64)))
        if not field.t_min <= t <= field.t_max:
            continue
        tt = torch.full((n,), t, dtype=torch.float64)
        x = field.sample_kernel(y, tt, generator=g)
        _, c_out, _, _ = field.denoiser_coefficients(x, tt, 1.0)
        weight = c_out.pow(-2)
        model_d = module.flow().denoiser(x.float(), tt.float()).double()
        exact_d = exact.denoiser(x, tt)
        out["sigma"].append(sigma)
        out["loss_model"].append(float((weight.flatten() * sq_norm(model_d - y)).mean() / d))
        out["loss_exact"].append(float((weight.flatten() * sq_norm(exact_d - y)).mean() / d))
        xq = field.sample_kernel(ref, tt, generator=g)
        w = torch.softmax(field.pairwise_posterior_logits(xq.flatten(1), ref.flatten(1), tt),
                          dim=1)
        ent = -(w * torch.log(w.clamp_min(1e-300))).sum(1) / math.log(len(ref))
        out["entropy"].append(float(ent.mean()))
    tmax = torch.full((n,), field.t_max, dtype=torch.float64)
    x = field.sample_kernel(ref, tmax, generator=g)
    log_mix = torch.logsumexp(field.pairwise_kernel_log_prob(x.flatten(1), ref.flatten(1),
                                                             tmax), dim=1) \
        - math.log(len(ref))
    kl = (log_mix - field.prior_log_prob(x)).double()
    out["prior_kl_nats"] = float(kl.mean())
    out["prior_kl_sem"] = float(kl.std() / math.sqrt(len(kl)))
    out["t_max"] = field.t_max
    write_json(path, out)
    return out
