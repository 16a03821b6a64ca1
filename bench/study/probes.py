"""The robustness probes: which data sets are probed, their sampling settings, and the noisy
prediction wrapper.

* **Euler steps** — the metric with Euler at each step count of ``probes.euler_steps``
  (NFE = steps): PFGM's step-size robustness.
* **noise** — the metric when every prediction ``p`` of the network is replaced by
  ``p + eps · rms(p) · z``, ``rms(p)`` the root mean square over each sample's coordinates and
  ``z ~ N(0, I)`` (seeded): noise of relative size ``eps`` on whatever the network predicts
  (the denoiser for denoiser-objective fields, the velocity for velocity-objective ones),
  sampled with ``probes.noise.solver`` at NFE budget ``probes.noise.nfe`` (PFGM++'s
  robustness-vs-D claim). The same wrapped model serves the drift and denoiser-form solvers.
"""

from __future__ import annotations

import contextlib

import torch

from .plan import Cell, Study, steps_for
from .util import override_root


def probed(study: Study, dataset: str) -> bool:
    """``probes.datasets`` lists the probed data sets; null: every toy2d (points) data set
    (image metrics are too slow on a CPU)."""
    names = study.cfg["probes"].get("datasets")
    if names is not None:
        return dataset in names
    ov = study.cfg["datasets"][dataset]["overrides"] + study.passthrough
    return any(o == "dataset=toy2d" for o in ov) and not any(
        override_root(o) == "dataset" and o != "dataset=toy2d" for o in study.passthrough)


def euler_key(steps: int) -> str:
    return f"euler-s{int(steps)}"


def noise_key(study: Study, eps: float) -> str:
    noise = study.cfg["probes"]["noise"]
    return f"noise-{noise['solver']}-s{steps_for(noise['solver'], noise['nfe'])}-eps{eps:g}"


def probe_cells(study: Study, dataset: str) -> list[Cell]:
    """The probes' sampling settings for a data set (none when it is not probed)."""
    if not probed(study, dataset):
        return []
    pr = study.cfg["probes"]
    cells = [Cell(euler_key(k), "euler", int(k)) for k in pr.get("euler_steps") or []]
    noise = pr.get("noise") or {}
    for eps in noise.get("eps") or []:
        cells.append(Cell(noise_key(study, float(eps)), noise["solver"],
                          steps_for(noise["solver"], noise["nfe"]), (), float(eps)))
    return cells


class NoisyPrediction(torch.nn.Module):
    """``model`` whose every prediction ``p`` (any shape ``(B, ...)``) gets
    ``eps · rms(p) · z``, ``z ~ N(0, I)`` drawn from its own seeded generator."""

    def __init__(self, model: torch.nn.Module, eps: float, seed: int):
        super().__init__()
        self.inner = model
        self.eps = float(eps)
        self.generator = torch.Generator().manual_seed(int(seed))

    def forward(self, x, t):
        pred = self.inner(x, t)
        if self.eps == 0:
            return pred
        z = torch.randn(pred.shape, generator=self.generator, dtype=pred.dtype).to(pred.device)
        rms = pred.flatten(1).pow(2).mean(1).sqrt().view(-1, *([1] * (pred.dim() - 1)))
        return pred + self.eps * rms * z


@contextlib.contextmanager
def noisy_model(module, eps: float | None, seed: int):
    """``module.model`` wrapped by :class:`NoisyPrediction` inside the block (``eps`` None or
    0: unchanged)."""
    if not eps:
        yield
        return
    original = module.model
    module.model = NoisyPrediction(original, eps, seed)
    try:
        yield
    finally:
        module.model = original
